"""The attention pooler's heads against a ``mean`` head's, and the default run's heads against
its encoder pass: this checkout and an earlier commit, side by side in one run.

Per side and repeat (interleaved, order alternating), each ``poolkit run`` in a fresh run
directory:

1. the default run from a cold cache of its own: ``settings.json``'s heads seconds over its
   encoder seconds, and the sha256 of its ``results.csv``;
2. ``--poolers attention`` and ``--poolers mean`` on that (now warm) cache: heads seconds,
   and the sha256 of each ``results.csv``.

    python benchmarks/trainable_heads.py [--ref 82530cf] [--repeats 3]
"""

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from against import ROOT, checkout, run_once  # noqa: E402


def spread(values: list) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main():
    import subprocess

    import pandas as pd
    from common import save

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="82530cf", help="the commit before this change")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        sides = {"this checkout": ROOT, args.ref: checkout(args.ref, tmp / "ref")}
        runs = {side: [] for side in sides}
        try:
            for repeat in range(args.repeats):
                order = list(sides.items()) if repeat % 2 == 0 else list(sides.items())[::-1]
                for side, source in order:
                    cache, tag = tmp / f"cache-{repeat}-{id(source)}", f"{repeat}-{id(source)}"
                    done = {"default": run_once(source, tmp / f"default-{tag}", cache, [])}
                    settings = (tmp / f"default-{tag}" / "settings.json").read_text()
                    done["encode"] = json.loads(settings)["encode_seconds"]
                    for pooler in ("attention", "mean"):
                        done[pooler] = run_once(source, tmp / f"{pooler}-{tag}", cache,
                                                ["--poolers", pooler])
                    runs[side].append(done)
                    print(side, {k: (v if k == "encode" else round(v["heads"], 2))
                                 for k, v in done.items()}, flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(tmp / "ref")], capture_output=True)
    rows = []
    for side, done in runs.items():
        attention = [r["attention"]["heads"] for r in done]
        mean = [r["mean"]["heads"] for r in done]
        heads = [r["default"]["heads"] for r in done]
        encode = [r["encode"] for r in done]
        rows.append({
            "code": side,
            "attention heads s": spread(attention),
            "mean heads s": spread(mean),
            "attention / mean": spread([a / m for a, m in zip(attention, mean)]),
            "default run: heads s": spread(heads),
            "encoder s": spread(encode),
            "heads / encoder": spread([h / e for h, e in zip(heads, encode)]),
            **{f"{name} results.csv": ",".join(sorted({r[name]["sha"]["results.csv"]
                                                       for r in done}))
               for name in ("default", "attention", "mean")},
        })
    save("trainable-heads", pd.DataFrame(rows), [
        f"{args.repeats} repeats per side, interleaved; median (min-max) over them",
        "default run: cold cache of its own, heads and encoder seconds from settings.json; "
        "attention and mean: --poolers alone on that warm cache, heads seconds",
        "results.csv: sha256 (first 12 hex digits) of every repeat's file, which must agree "
        "within a side and, where the code changed nothing in them, across sides",
    ])


if __name__ == "__main__":
    main()
