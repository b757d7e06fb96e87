"""The comparison stage (``poolkit.evaluation.stats.compare``) of this checkout against commit REF,
side by side on the shape of the README's layer sweep: 64 feature sets x 3 seeds on 487
test items (2,016 pairs x 7 metrics, B = 10,000), or ``--folds 5`` for cross-fitting.

Each side runs in its own process from a worktree of its revision, ``--repeats`` times,
interleaved; the table gives each side's best and median seconds of ``compare`` (imports
excluded: pandas and scipy.stats are loaded first, as a run has loaded them before its
comparison) and the sha256 of its pairs frame as CSV and of its intervals, which must agree
between the sides when a change keeps the numbers.

    python benchmarks/comparison.py REF [--repeats 3] [--folds 5]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from against import ROOT, checkout

ONE = """
import hashlib, io, json, sys, time
import numpy as np
import pandas, scipy.stats  # loaded before compare() in a run (data, heads): not its cost
try:
    from poolkit.evaluation.stats import compare
except ImportError:  # a commit from before poolkit's subpackages
    from poolkit.stats import compare
folds = int(sys.argv[1])
rng = np.random.default_rng(0)
n, sets, seeds = 487, 64, 3
y = rng.integers(0, 2, n)
probs = {}
for k in range(sets):
    logits = rng.normal(size=(seeds, n, 2)) + (y[None, :, None] == np.arange(2)) * (0.5 + k / sets)
    p = np.exp(logits)
    probs[f"set{k}"] = p / p.sum(-1, keepdims=True)
options = dict(folds=np.arange(n) % folds, test_train_ratio=1 / (folds - 1)) if folds > 1 else {}
began = time.perf_counter()
found = compare(probs, y, **options)
seconds = time.perf_counter() - began
csv = io.StringIO()
found.pairs.to_csv(csv, index=False)
print(json.dumps({"seconds": seconds,
                  "pairs": hashlib.sha256(csv.getvalue().encode()).hexdigest()[:12],
                  "intervals": hashlib.sha256(repr(found.intervals).encode()).hexdigest()[:12]}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ref")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folds", type=int, default=1)
    args = parser.parse_args()

    import pandas as pd
    from common import save

    with tempfile.TemporaryDirectory() as tmp:
        sides = {"this checkout": ROOT, args.ref: checkout(args.ref, Path(tmp) / "ref")}
        try:
            runs = {side: [] for side in sides}
            for _ in range(args.repeats):
                for side, source in sides.items():
                    done = subprocess.run([sys.executable, "-c", ONE, str(args.folds)],
                                          cwd=source, capture_output=True, text=True,
                                          env={**os.environ, "PYTHONPATH": str(source)})
                    if done.returncode != 0:
                        raise SystemExit(f"{side} failed:\n{done.stderr[-3000:]}")
                    runs[side].append(json.loads(done.stdout.splitlines()[-1]))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(Path(tmp) / "ref")], capture_output=True)
    rows = []
    for side, found in runs.items():
        seconds = [r["seconds"] for r in found]
        rows.append({"side": side, "best s": round(min(seconds), 2),
                     "median s": round(statistics.median(seconds), 2),
                     "every run s": " ".join(f"{s:.1f}" for s in seconds),
                     "pairs sha256": " ".join(sorted({r["pairs"] for r in found})),
                     "intervals sha256": " ".join(sorted({r["intervals"] for r in found}))})
    table = pd.DataFrame(rows)
    ratio = table["best s"].iloc[1] / table["best s"].iloc[0]
    shape = "one test split" if args.folds == 1 else f"{args.folds} cross-fitted folds"
    save(f"comparison-{args.ref}-folds{args.folds}", table,
         [f"compare() on 64 sets x 3 seeds x 487 items, {shape}; {args.repeats} runs per side, "
          f"interleaved. {args.ref} / this checkout, best of each: {ratio:.2f}x."])


if __name__ == "__main__":
    main()
