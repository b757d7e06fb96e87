"""This checkout (or commit NEW) against an earlier commit: the same ``poolkit run``, side by side.

Each side gets its own warm cache (one cold run first, not timed), then the
command runs ``--repeats`` times per side, interleaved, each into a fresh run
directory (so every head trains and every pooler pools), or with ``--rerun``
into the cold run's directory (a re-run of a finished command: every head is
reused). Reported per side: the
best wall time of the whole process, and the medians of the phases each run
records in settings.json (pooling, heads); plus the sha256 of results.csv,
summary.csv and pairs.csv of each side's runs, which must agree within a side.

    python benchmarks/against.py REF [--new NEW] [--repeats 3] [-- poolkit run options]

REF (and NEW) are git revisions (e.g. ``HEAD~3``), each checked out in a temporary
worktree; without ``--new`` the other side is this checkout as it is. Run from the
repository root in the project's environment.
"""

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLES = ("results.csv", "summary.csv", "pairs.csv")


def checkout(ref: str, where: Path) -> Path:
    """A worktree of ``ref`` whose ``poolkit.plugins`` resolves to its own ``plugins/``."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), ref],
                   check=True, capture_output=True)
    (where / "poolkit" / "plugins").symlink_to(where / "plugins")
    return where


def run_once(source: Path, out: Path, cache: Path, extra: list) -> dict:
    env = {**os.environ, "POOLKIT_CACHE_DIR": str(cache), "CI": "1",
           "PYTHONPATH": str(source)}
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "poolkit", "run", "--out", str(out), *extra],
                          env=env, cwd=source, capture_output=True, text=True)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"poolkit run in {source} failed:\n{done.stderr[-3000:]}")
    settings = json.loads((out / "settings.json").read_text())
    return {"wall": wall, "pool": settings.get("pool_seconds"),
            "heads": settings["train_seconds"],
            "sha": {name: hashlib.sha256((out / name).read_bytes()).hexdigest()[:12]
                    for name in TABLES}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ref")
    parser.add_argument("--new", help="a revision to compare instead of this checkout")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rerun", action="store_true",
                        help="time re-runs into the finished run directory (heads reused)")
    parser.add_argument("--name", default=None, help="results/<name>.md (default: against-REF)")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args, extra = parser.parse_args(argv[:cut]), argv[cut + 1 :]  # after --: poolkit run's

    import pandas as pd
    from common import save

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sides = {args.new or "this checkout": checkout(args.new, tmp / "new") if args.new else ROOT,
                 args.ref: checkout(args.ref, tmp / "ref")}
        try:
            runs = {side: [] for side in sides}
            for side, source in sides.items():  # cold, untimed: fills each side's cache
                run_once(source, tmp / f"cold-{id(source)}", tmp / f"cache-{id(source)}", extra)
            for repeat in range(args.repeats):
                order = list(sides.items()) if repeat % 2 == 0 else list(sides.items())[::-1]
                for side, source in order:
                    out = tmp / (f"cold-{id(source)}" if args.rerun
                                 else f"run-{repeat}-{id(source)}")
                    runs[side].append(run_once(source, out, tmp / f"cache-{id(source)}", extra))
        finally:
            for tree in ("new", "ref"):
                if (tmp / tree).exists():
                    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                    str(tmp / tree)], capture_output=True)
        rows = []
        for side, done in runs.items():
            shas = {name: sorted({r["sha"][name] for r in done}) for name in TABLES}
            rows.append({
                "code": side,
                "best wall s": round(min(r["wall"] for r in done), 2),
                "median wall s": round(statistics.median(r["wall"] for r in done), 2),
                "median pooling s": (round(statistics.median(r["pool"] for r in done), 3)
                                     if all(r["pool"] is not None for r in done) else None),
                "median heads s": round(statistics.median(r["heads"] for r in done), 2),
                **{f"{name} sha256": ",".join(shas[name]) for name in TABLES},
            })
        this, ref = rows
        notes = [
            f"Command: poolkit run {' '.join(extra) or '(defaults)'}; warm cache; "
            f"{args.repeats} runs per side, interleaved; "
            + ("re-runs of the finished command (every head reused)." if args.rerun
               else "each into a fresh run directory."),
            f"Best wall time, {this['code']} / {args.ref}: "
            f"{this['best wall s'] / ref['best wall s']:.3f}",
            "Every run: " + "; ".join(
                f"{side} " + ", ".join(f"{r['wall']:.2f}" for r in done)
                for side, done in runs.items()),
        ]
        save(args.name or f"against-{args.ref.replace('/', '_').replace('~', '-')}",
             pd.DataFrame(rows), notes)


if __name__ == "__main__":
    main()
