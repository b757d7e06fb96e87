"""Is the paired test honest under cross-fitting? False positives and power, simulated.

Each simulated dataset is a random subsample (without replacement) of the default
data's items with their pooled features from the default model (``mean`` of the
last layer). On it, poolkit's own path runs: stratified ``--folds`` folds
(:func:`poolkit.data.folds.cross_folds`), its linear heads trained per fold
(:func:`poolkit.heads.linear.train_heads`), the out-of-fold probabilities
assembled, and :func:`poolkit.evaluation.stats.compare` with Holm's correction.

- **Null**: ``copies`` copies of the feature set, each with its own seeded
  Gaussian noise (``--null-noise`` × each dimension's std), compared pairwise.
  The copies are exchangeable, so none is truly better and any significant pair
  after Holm's correction is a false positive; the family-wise rate over
  datasets must stay near alpha. Small noise is the near-identical case; larger
  noise makes the copies' predictions differ item by item, as two real poolers'
  do. Reported for every metric and for McNemar's test.
- **Power**: the feature set against a copy with a planted loss of signal
  (``--planted-noise`` × std of noise, several accuracy points worse on average):
  the share of datasets where the difference is significant.

Each rate comes with its exact (Clopper-Pearson) 95% binomial interval.

    python benchmarks/calibration.py [--datasets 400] [--null-noise 0.01] [--planted-noise 0.7]

``--across`` calibrates the cross-task verdict of ``poolkit suite`` instead
(:func:`simulate_across`): simulated suites of ``--tasks`` tasks, each task's
paired tests by :func:`poolkit.evaluation.stats.compare`, the verdict by
:func:`poolkit.evaluation.across.verdict` exactly as a suite computes it.

    python benchmarks/calibration.py --across [--suites 1000] [--tasks 4] [--items 500]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def noisy(x: np.ndarray, scale: float, seed) -> np.ndarray:
    """``x`` plus Gaussian noise of ``scale`` × each column's std (seeded)."""
    noise = np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)
    return x + noise * (scale * x.std(axis=0, keepdims=True))


def cross_fitted(sets: dict, labels: np.ndarray, folds: int, seed: int, head=None) -> tuple:
    """Out-of-fold probabilities ``{name: (1, n, C)}`` of poolkit's linear heads
    (one seed; ``head`` a :class:`~poolkit.heads.base.HeadConfig`, default poolkit's) on
    ``sets`` ``{name: (n, D)}``, as ``poolkit run --folds`` makes them, and what
    :func:`poolkit.evaluation.stats.compare` needs to know of the folds (as a run passes it)."""
    from poolkit.data.folds import cross_folds
    from poolkit.heads.base import HeadConfig, HeadTask
    from poolkit.heads.linear import train_heads

    num_labels = int(labels.max()) + 1
    out = {name: np.empty((1, len(labels), num_labels)) for name in sets}
    fold_of = np.empty(len(labels), dtype=np.int64)
    ratios = []
    for fold, splits in enumerate(cross_folds(labels, folds, seed, 0.1, "simulated data")):
        task = HeadTask(labels, splits, num_labels, head or HeadConfig(), fold=fold, folds=folds)
        for trained in train_heads(sets, task, [0]):
            out[trained.feature_set][0, splits["test"]] = trained.probabilities
        fold_of[splits["test"]] = fold
        ratios.append(len(splits["test"]) / len(splits["train"]))
    return out, {"folds": fold_of, "test_train_ratio": float(np.mean(ratios))}


def simulate(x: np.ndarray, labels: np.ndarray, *, datasets: int, items: int, folds: int,
             copies: int, null_noise: float, planted_noise: float, n_boot: int, seed: int = 0,
             alpha: float = 0.05, head=None, metrics=None) -> dict:
    """Run the null and the planted simulations; return counts and rates.

    ``x`` ``(N, D)`` features and ``labels`` ``(N,)`` label ids of the pool the
    datasets are drawn from; ``head`` the heads' settings (default poolkit's); ``metrics``
    the names of the metrics to test (default all of them). Returns ``{"null": {...}, "planted": {...}}`` with,
    per test, how many datasets rejected (any pair, after Holm).
    """
    from poolkit.evaluation.metrics import METRICS
    from poolkit.evaluation.stats import compare

    chosen = {m: METRICS[m] for m in (metrics or METRICS)}
    tests = [*chosen, "mcnemar"]
    null = dict.fromkeys(tests, 0)
    planted = dict.fromkeys(tests, 0)
    # the same tests with the item bootstrap alone (the heads held fixed), side by side
    null_items, planted_items = dict.fromkeys(chosen, 0), dict.fromkeys(chosen, 0)
    gaps = []
    for d in range(datasets):
        rng = np.random.default_rng([seed, d])
        rows = np.sort(rng.choice(len(labels), size=items, replace=False))
        xd, yd = x[rows], labels[rows]
        sets = {"base": xd, "planted": noisy(xd, planted_noise, seed=[seed, d, 0])}
        for c in range(1, copies + 1):  # exchangeable: none is truly better
            sets[f"copy{c}"] = noisy(xd, null_noise, seed=[seed, d, c])
        probs, fitted = cross_fitted(sets, yd, folds, seed=d, head=head)
        copies_only = {k: v for k, v in probs.items() if k.startswith("copy")}
        against = {"base": probs["base"], "planted": probs["planted"]}
        options = dict(n_boot=n_boot, seed=d, metrics=chosen)
        nulls = compare(copies_only, yd, **options, **fitted).pairs
        power = compare(against, yd, **options, **fitted).pairs
        nulls_items = compare(copies_only, yd, **options).pairs
        power_items = compare(against, yd, **options).pairs
        for m in chosen:
            null[m] += bool((nulls[f"{m}_p_holm"] < alpha).any())
            planted[m] += bool((power[f"{m}_p_holm"] < alpha).any())
            null_items[m] += bool((nulls_items[f"{m}_p_holm"] < alpha).any())
            planted_items[m] += bool((power_items[f"{m}_p_holm"] < alpha).any())
        null["mcnemar"] += bool((nulls["p_mcnemar_holm"] < alpha).any())
        planted["mcnemar"] += bool((power["p_mcnemar_holm"] < alpha).any())
        row = power.iloc[0]
        gaps.append(row["accuracy_diff"] if row["a"] == "base" else -row["accuracy_diff"])
    return {"null": null, "planted": planted, "null_items": null_items,
            "planted_items": planted_items, "datasets": datasets,
            "planted_gap": float(np.mean(gaps)), "pairs": copies * (copies - 1) // 2}


def simulated_task(rng, items: int, noise: dict, signal: float = 1.0) -> tuple:
    """``(probabilities {name: (1, n, 2)}, labels (n,))`` of one simulated binary task:
    every name scores the same latent item score plus its own Gaussian noise of
    ``noise[name]`` (equal noise: exchangeable, none truly better on the task)."""
    y = rng.integers(0, 2, size=items)
    latent = (2 * y - 1) * signal + rng.standard_normal(items)
    probs = {}
    for name, scale in noise.items():
        logit = latent + scale * rng.standard_normal(items)
        p1 = 1 / (1 + np.exp(-logit))
        probs[name] = np.stack([1 - p1, p1], axis=1)[None]
    return probs, y


#: The cross-task scenarios: per task t, each name's noise (see :func:`simulated_task`).
ACROSS_SCENARIOS = {
    # three exchangeable names on every task: no pair differs, nor do their ranks
    "null: exchangeable": lambda t, gap: {"a": 1.0, "b": 1.0, "c": 1.0},
    # a real gap on every task, drawn for each task around zero, so a's way on some
    # tasks and b's on others: no difference on average over tasks (the pooled null,
    # a random-effects mean of 0), with heterogeneity between them
    "null: random gaps": "random",
    # a better than b and c (exchangeable) on every task
    "planted: consistent gap": lambda t, gap: {"a": 1.0 - gap, "b": 1.0, "c": 1.0},
}


def simulate_across(*, suites: int, tasks: int, items: int, gap: float, n_boot: int,
                    seed: int = 0, alpha: float = 0.05) -> dict:
    """Per scenario of :data:`ACROSS_SCENARIOS`, how many of ``suites`` simulated suites
    each cross-task test rejected: the pooled effect (any pair after Holm; Hartung–Knapp,
    and the plain DerSimonian–Laird z-test for contrast), Nemenyi (any pair) and Friedman;
    under the planted scenario, a vs b alone. Also the mean accuracy gap planted."""
    import pandas as pd

    from poolkit.evaluation.across import random_effects, verdict
    from poolkit.evaluation.metrics import METRICS
    from poolkit.evaluation.stats import compare, holm

    accuracy = {"accuracy": METRICS["accuracy"]}
    found = {}
    for scenario, noise_of in ACROSS_SCENARIOS.items():
        counts = dict.fromkeys(("pooled (Hartung-Knapp)", "pooled (DerSimonian-Laird z)",
                                "Nemenyi", "Friedman"), 0)
        gaps = []
        for s in range(suites):
            rng = np.random.default_rng([seed, zlib_key(scenario), s])
            runs = {}
            for t in range(tasks):
                if noise_of == "random":
                    drawn = rng.normal(0, gap)
                    noise = {"a": 1.0 - max(drawn, 0.0), "b": 1.0 - max(-drawn, 0.0)}
                else:
                    noise = noise_of(t, gap)
                probs, y = simulated_task(rng, items, noise)
                pairs = compare(probs, y, n_boot=n_boot, seed=s * tasks + t,
                                metrics=accuracy).pairs
                values = {n: float(np.mean(p[0].argmax(axis=1) == y)) for n, p in probs.items()}
                summary = pd.DataFrame({"pooler": list(values), "layer": "6", "encoder": "frozen",
                                        "accuracy_mean": list(values.values()), "status": "ok"})
                runs[f"t{t}"] = (summary, pairs.assign(a=pairs["a"] + "@6", b=pairs["b"] + "@6"))
                gaps.append(values["a"] - values["b"])
            result = verdict(runs, alpha=alpha)
            pairs = result.pairs
            if scenario.startswith("planted"):  # power: a vs b
                pairs = pairs[pairs["a"].isin(["a@6", "b@6"]) & pairs["b"].isin(["a@6", "b@6"])]
            per_pair = result.task_pairs
            z_p = [random_effects(group["accuracy_diff"], group["accuracy_se"], alpha,
                                  hartung_knapp=False)["p"]
                   for _, group in per_pair.groupby(["a", "b"], sort=False)]
            z_holm = dict(zip(result.pairs[["a", "b"]].itertuples(index=False, name=None),
                              holm(z_p)))
            counts["pooled (Hartung-Knapp)"] += bool(pairs["significant"].any())
            counts["pooled (DerSimonian-Laird z)"] += any(
                z_holm[a, b] < alpha for a, b in zip(pairs["a"], pairs["b"]))
            counts["Nemenyi"] += bool(pairs["nemenyi_significant"].any())
            counts["Friedman"] += bool(result.friedman["p"] < alpha)
        found[scenario] = {"counts": counts, "gap": float(np.mean(gaps))}
    return {"suites": suites, "tasks": tasks, "items": items, "scenarios": found}


def zlib_key(text: str) -> int:
    import zlib

    return zlib.crc32(text.encode())


def binomial_interval(k: int, n: int, confidence: float = 0.95) -> tuple:
    """Clopper-Pearson interval of a rate ``k / n``."""
    from scipy import stats

    result = stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    return result.low, result.high


def default_features(pooler: str = "mean"):
    """``(features (N, D), label ids (N,))`` of ``pooler`` on the last layer of the
    default model over the default data, through poolkit's stages (cache reused)."""
    from poolkit.config import RunConfig
    from poolkit.pipeline.stages import encode, load_data, pool, resolve_poolers

    config = RunConfig(poolers=(pooler,), folds=1)
    poolers = resolve_poolers(config.poolers)
    dataset = load_data(config.group("data"), config.planned)
    encoded = encode(config, poolers.selected, dataset.texts)
    features = pool(encoded)
    (x,) = features.arrays.values()
    return np.asarray(x, dtype=np.float32), dataset.labels


def main():
    from common import save

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", type=int, default=400)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--copies", type=int, default=4, help="noisy null copies (pairs: "
                        "copies choose 2, Holm-corrected)")
    parser.add_argument("--null-noise", type=float, default=0.01)
    parser.add_argument("--planted-noise", type=float, default=0.7)
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--pooler", default="mean")
    parser.add_argument("--metrics", help="comma-separated metrics to test (default: all; "
                        "the first is the primary one)")
    parser.add_argument("--across", action="store_true",
                        help="calibrate the cross-task verdict of poolkit suite instead")
    parser.add_argument("--suites", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--gap", type=float, default=0.25,
                        help="noise taken off the better name (cross-task; the null's random "
                             "gaps have this sd)")
    args = parser.parse_args()

    import pandas as pd

    if args.across:
        return across_main(args)

    x, labels = default_features(args.pooler)
    began = time.perf_counter()
    found = simulate(x, labels, datasets=args.datasets, items=args.items, folds=args.folds,
                     copies=args.copies, null_noise=args.null_noise,
                     planted_noise=args.planted_noise, n_boot=args.n_boot,
                     metrics=args.metrics.split(",") if args.metrics else None)
    seconds = time.perf_counter() - began
    n = found["datasets"]
    rows = []
    def rate(k):
        low, high = binomial_interval(k, n)
        return f"{k}/{n} = {k / n:.3f} [{low:.3f}, {high:.3f}]"

    for test in found["null"]:
        items_only = test in found["null_items"]
        rows.append({"test": test,
                     "false positives [95% CI]": rate(found["null"][test]),
                     "power [95% CI]": rate(found["planted"][test]),
                     "item bootstrap alone: false positives": rate(found["null_items"][test])
                     if items_only else "",
                     "item bootstrap alone: power": rate(found["planted_items"][test])
                     if items_only else ""})
    name = f"calibration-null-noise-{args.null_noise:g}"
    if args.metrics:
        name += "-" + args.metrics.replace(",", "-")
    save(name, pd.DataFrame(rows), [
        f"{n} datasets of {args.items} items drawn without replacement from the default data's "
        f"{len(labels)}; features: {args.pooler} of the default model's last layer",
        f"{args.folds}-fold cross-fitting, poolkit's linear heads (1 seed), paired bootstrap "
        f"B = {args.n_boot}, alpha 0.05; the first two columns are poolkit's tests (the "
        "heads' refit variance added under cross-fitting, Student's t with Welch-Satterthwaite's "
        "df), the last two the item bootstrap "
        "alone on the same datasets, as poolkit tested before",
        f"null: {args.copies} copies of the features, each with its own {args.null_noise} x std "
        f"seeded noise, {found['pairs']} pairs Holm-corrected; a dataset counts once if any "
        "pair is significant (family-wise)",
        f"planted: the features against a copy with {args.planted_noise} x std noise; mean "
        f"accuracy gap {found['planted_gap']:.4f}",
        f"simulation took {seconds:.0f} s",
    ])


def across_main(args) -> None:
    import pandas as pd
    from common import save

    items = 500 if args.items == 2000 else args.items  # --items' per-task default
    n_boot = min(args.n_boot, 1000)
    began = time.perf_counter()
    found = simulate_across(suites=args.suites, tasks=args.tasks, items=items, gap=args.gap,
                            n_boot=n_boot)
    seconds = time.perf_counter() - began
    n = found["suites"]
    rows = []
    for scenario, result in found["scenarios"].items():
        for test, k in result["counts"].items():
            low, high = binomial_interval(k, n)
            rows.append({"scenario": scenario, "test": test, "suites rejecting": f"{k}/{n}",
                         "rate [95% CI]": f"{k / n:.3f} [{low:.3f}, {high:.3f}]",
                         "mean gap a - b": f"{result['gap']:+.4f}"})
    save(f"calibration-across-{args.tasks}-tasks", pd.DataFrame(rows), [
        f"{n} simulated suites per scenario, each of {args.tasks} binary tasks of {items} items; "
        "each name's probabilities are the items' shared latent score plus its own Gaussian "
        f"noise (sd 1, or 1 - {args.gap} for the better name), so equal noise is exchangeable",
        f"each task: poolkit.evaluation.stats.compare (paired bootstrap, B = {n_boot}); the suite: "
        "poolkit.evaluation.across.verdict, as poolkit suite computes it; alpha 0.05",
        "null rows: a suite counts once if any pair (3 pairs, Holm) or Friedman rejects, "
        "the family-wise rate; 'random gaps' has one pair, a's noise 1 - g and b's 1 on a "
        f"task where g ~ N(0, {args.gap}) is positive, the other way round where negative: a "
        "real gap on every task, zero on average over tasks",
        "planted row: power of a vs b (a less noisy on every task)",
        "'DerSimonian-Laird z' is the textbook random-effects test (normal, no Hartung-Knapp), "
        "shown for contrast; poolkit reports the Hartung-Knapp one",
        f"simulation took {seconds:.0f} s",
    ])


if __name__ == "__main__":
    main()
