"""``poolkit --help`` of this checkout against an earlier commit, side by side.

Each side's ``python -m poolkit --help`` runs ``--repeats`` times in a fresh interpreter,
interleaved with the other side's; printed: each side's median and best (s) and the ratio
of medians (this checkout / REF), and which poolkit modules each side's help imported.

    python benchmarks/help_time.py REF [--repeats 40]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from against import ROOT, checkout  # noqa: E402

IMPORTED = ("import runpy, sys; sys.argv = ['poolkit', '--help']\n"
            "try:\n    runpy.run_module('poolkit', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print(len([m for m in sys.modules if m.startswith('poolkit')]), "
            "'numpy' in sys.modules, file=sys.stderr)")


def once(source: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(source)}
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "poolkit", "--help"], env=env, cwd=source,
                   stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - began


def imported(source: Path) -> str:
    done = subprocess.run([sys.executable, "-c", IMPORTED], env={**os.environ,
                          "PYTHONPATH": str(source)}, cwd=source, capture_output=True,
                          text=True, check=True)
    modules, numpy = done.stderr.split()
    return f"{modules} poolkit modules, numpy {'imported' if numpy == 'True' else 'not imported'}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ref")
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sides = {args.ref: checkout(args.ref, Path(tmp) / "ref"), "this checkout": ROOT}
        try:
            times = {name: [] for name in sides}
            for _ in range(args.repeats):
                for name, source in sides.items():
                    times[name].append(once(source))
            for name, source in sides.items():
                print(f"{name}: median {statistics.median(times[name]):.3f} s, best "
                      f"{min(times[name]):.3f} s; {imported(source)}")
            ratio = statistics.median(times["this checkout"]) / statistics.median(times[args.ref])
            print(f"this checkout / {args.ref}, medians: {ratio:.2f}x")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(sides[args.ref])], capture_output=True)


if __name__ == "__main__":
    main()
