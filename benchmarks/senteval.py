"""SentEval's probe: scikit-learn fit by fit against poolkit's batched solver, side by side.

1. The whole command, timed as a subprocess from a warm cache:
   ``poolkit run --protocol senteval --poolers mean,max,cls,bert_pooler`` on the
   default data, and its accuracies.
2. A subset (``--outer`` outer folds of each pooler), the same probes three ways:

   - ``sklearn-100``: poolkit's path before the batched solver (SentEval's own
     setting): 61 ``LogisticRegression(C)`` fits per fold on the float32 features,
     lbfgs stopped at its default 100 iterations;
   - ``sklearn-optimum``: the same fits run to their optimum (float64,
     ``tol=1e-10``, ``max_iter=10_000``);
   - ``batched``: :func:`poolkit.heads.probes.senteval_probe`, the 66 problems of a
     fold solved at once by :mod:`poolkit.heads.logistic`.

   Each with its seconds, the ``C`` it chose, its test accuracy, and how many test
   items it predicts differently from ``batched``.

    python benchmarks/senteval.py [--outer 1]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

POOLERS = ("mean", "max", "cls", "bert_pooler")


def sklearn_probe(x, y, rows, grid, folds, seed, optimum: bool):
    """SentEval's InnerKFoldClassifier with scikit-learn, fit by fit: ``(C, probe)``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    settings = {"tol": 1e-10, "max_iter": 10_000} if optimum else {}
    x = x.astype(np.float64) if optimum else x
    xs, ys = x[rows], y[rows]
    splits = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(xs, ys))
    scores = [np.mean([LogisticRegression(C=c, random_state=seed, **settings)
                       .fit(xs[a], ys[a]).score(xs[b], ys[b]) for a, b in splits]) for c in grid]
    c = grid[int(np.argmax(scores))]
    return c, LogisticRegression(C=c, random_state=seed, **settings).fit(xs, ys)


def whole_command(tmp: str) -> tuple:
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "poolkit", "run", "--protocol", "senteval",
                    "--poolers", ",".join(POOLERS), "--out", f"{tmp}/run"],
                   env={**os.environ, "CI": "1"}, check=True, capture_output=True)
    seconds = time.perf_counter() - began
    import pandas as pd

    summary = pd.read_csv(f"{tmp}/run/summary.csv").set_index("pooler")
    return seconds, {p: summary.loc[p, "accuracy_mean"] for p in POOLERS}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outer", type=int, default=1, help="outer folds per pooler (subset)")
    args = parser.parse_args()

    import pandas as pd
    from common import save

    import poolkit
    from poolkit.data.dataset import load_dataset
    from poolkit.heads.probes import SENTEVAL_C, senteval_probe

    dataset = load_dataset(folds=10, validation_size=0.0)
    features = poolkit.pool(dataset.texts, POOLERS)  # warms the cache for the command too
    with tempfile.TemporaryDirectory() as tmp:
        seconds, accuracy = whole_command(tmp)
    y = dataset.labels
    rows, notes = [], []
    for pooler in POOLERS:
        for fold in dataset.folds[:args.outer]:
            train, test = fold["train"], fold["test"]
            x = features[pooler]
            began = time.perf_counter()
            probe = senteval_probe(x, y, train, SENTEVAL_C, 10, seed=0)
            batched_seconds = time.perf_counter() - began
            batched = probe.classes_[probe.predict_proba(x[test]).argmax(axis=1)]
            rows.append({"pooler": pooler, "path": "batched", "seconds": batched_seconds,
                         "C": probe.C, "accuracy": np.mean(batched == y[test]), "differ": 0})
            for name, optimum in (("sklearn-100", False), ("sklearn-optimum", True)):
                began = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    c, fitted = sklearn_probe(x, y, train, SENTEVAL_C, 10, 0, optimum)
                predicted = fitted.predict(x[test].astype(np.float64) if optimum else x[test])
                rows.append({"pooler": pooler, "path": name,
                             "seconds": time.perf_counter() - began, "C": c,
                             "accuracy": np.mean(predicted == y[test]),
                             "differ": int((predicted != batched).sum())})
    table = pd.DataFrame(rows)
    per_path = table.groupby("path", sort=False)["seconds"].sum()
    notes.append(f"whole command, warm cache (4 poolers x 10 folds, subprocess): {seconds:.1f} s; "
                 "accuracy " + ", ".join(f"{p} {a:.4f}" for p, a in accuracy.items()))
    notes.append(f"subset: {args.outer} outer fold(s) per pooler, test part {len(test)} items; "
                 "seconds summed over it: " + ", ".join(f"{k} {v:.1f}" for k, v in per_path.items())
                 + f"; sklearn-100 / batched {per_path['sklearn-100'] / per_path['batched']:.1f}x")
    notes.append("differ: test items predicted differently from batched (same fold, same C grid)")
    table["seconds"] = table["seconds"].round(2)
    table["accuracy"] = table["accuracy"].round(4)
    save("senteval-probe", table, notes)
    print(json.dumps({"command_seconds": seconds, "accuracy": accuracy}))


if __name__ == "__main__":
    main()
