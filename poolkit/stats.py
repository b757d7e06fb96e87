"""Uncertainty over seeds and significance between poolers (numpy, scipy, pandas).

Seeds vary the heads; the test items are shared by every pooler, so poolers are
compared *paired* on those items: a bootstrap over items with the same resamples
for every pooler, and McNemar's exact test on the seed-ensemble predictions.
"""

import math

import numpy as np

#: Defaults of :func:`paired_comparisons`, also quoted in :data:`METHODS`.
N_BOOT = 10_000
ALPHA = 0.05

#: Columns of the :func:`paired_comparisons` frame, in order.
PAIR_COLUMNS = (
    "a", "b", "accuracy_a", "accuracy_b", "diff", "diff_low", "diff_high",
    "p_bootstrap", "p_bootstrap_holm", "mcnemar_b", "mcnemar_c", "p_mcnemar",
    "p_mcnemar_holm", "significant",
)

#: How the numbers are computed, for exports/README (states the defaults above).
METHODS = (
    "Accuracy is the mean over seeds with a 95% Student-t interval for that mean, "
    "mean ± t(0.975, k−1)·s/√k for k seeds (s with ddof=1; no interval from one seed). "
    f"Poolers are compared pairwise with a paired bootstrap over the test items: B = {N_BOOT:,} "
    "resamples of the items, the same for every pooler, each item's correctness averaged over "
    "that pooler's seeds; the difference in accuracy d gets a 95% percentile interval and a "
    "two-sided p-value from its bootstrap standard error, p = 2·Φ(−|d| / sd(d*)) (a normal "
    "approximation: a count of resamples could not go below 1/(B + 1), too coarse for a "
    "Holm correction over many pairs). "
    "McNemar's exact (binomial) test is run on the seed-ensemble predictions (argmax of the "
    "probabilities averaged over seeds), and both sets of p-values are Holm–Bonferroni corrected "
    f"over all pairs; a difference is significant when its corrected bootstrap p is below {ALPHA}. "
    "Groups are formed down the accuracy ranking: a pooler joins the current group unless it is "
    "significantly worse than the group's leader (its most accurate member), in which case it "
    "leads a new group, so poolers in one group are not significantly worse than its leader."
)

# Item draws per chunk (int64 entries): bounds memory at ~64 MiB per copy.
# Chunking does not change the draws: the generator yields the same items either way.
_CHUNK_ENTRIES = 1 << 23
# Bootstrap differences held at once (B × pairs float64 entries).
_PAIR_CHUNK_ENTRIES = 1 << 23


def seed_interval(values, confidence: float = 0.95) -> tuple[float, float, float, float]:
    """``(mean, std, low, high)`` of ``values`` (one metric, one value per seed).

    ``std`` uses ddof=1; ``low, high`` is the Student-t interval for the mean,
    ``mean ± t((1 + confidence) / 2, k - 1) · std / √k``. NaNs are ignored. One
    value gives std 0.0 and a NaN interval (one seed says nothing about spread);
    no values (or only NaNs) give four NaNs.
    """
    from scipy import stats

    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    x = np.asarray(values, dtype=float).ravel()
    x = x[~np.isnan(x)]
    k = x.size
    if k == 0:
        return (math.nan,) * 4
    mean = float(x.mean())
    if k == 1:
        return mean, 0.0, math.nan, math.nan
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, k - 1)) * std / math.sqrt(k)
    return mean, std, mean - half, mean + half


def holm(p_values) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values ``(m,)``, in the order given.

    Sorted ascending, the i-th smallest (1-based) becomes ``p_(i) · (m − i + 1)``,
    made non-decreasing by a running maximum and clipped at 1.
    """
    p = np.asarray(p_values, dtype=float).ravel()
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = p[order] * (m - np.arange(m))
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted


def paired_comparisons(probabilities: dict, y_true, *, n_boot: int = N_BOOT, alpha: float = ALPHA,
                       seed: int = 0):
    """Every pair of feature sets compared on the same test items: one row per pair.

    ``probabilities[name]`` is ``(seeds, n, C)``: each seed's predicted
    probabilities for the same ``n`` test items (seed counts may differ between
    names); ``y_true`` is ``(n,)`` label ids. A name's accuracy is the mean over
    items of its correctness averaged over seeds. The bootstrap draws ``n_boot``
    resamples of the items (a ``numpy`` Generator seeded by ``seed``), shared by
    all names; per pair it gives the ``1 - alpha`` percentile interval of the
    difference and the p-value from its bootstrap standard error. McNemar's exact test uses the
    seed-ensemble predictions. Both p-values are Holm-corrected over all pairs;
    ``significant`` is ``p_bootstrap_holm < alpha``.

    Rows: names ranked by accuracy (descending, ties in the order given), ``a``
    ranked above ``b``, ordered by (rank of a, rank of b). See :data:`METHODS`.
    """
    import pandas as pd

    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    names = list(probabilities)
    if len(names) < 2:
        return pd.DataFrame({column: [] for column in PAIR_COLUMNS})
    y = _labels(y_true)
    correct, ensemble = _correctness(probabilities, y)
    accuracy = correct.mean(axis=0)
    rank = np.argsort(-accuracy, kind="stable")
    ia, ib = (np.array(side, dtype=int) for side in zip(*(
        (rank[i], rank[j]) for i in range(len(rank)) for j in range(i + 1, len(rank))
    )))
    boot = _bootstrap_accuracy(correct, n_boot, seed)
    diff = accuracy[ia] - accuracy[ib]
    low, high, p_boot = _bootstrap_pairs(boot, ia, ib, diff, alpha)
    b, c, p_mcnemar = _mcnemar(ensemble, ia, ib)
    frame = pd.DataFrame({
        "a": [names[i] for i in ia],
        "b": [names[i] for i in ib],
        "accuracy_a": accuracy[ia],
        "accuracy_b": accuracy[ib],
        "diff": diff,
        "diff_low": low,
        "diff_high": high,
        "p_bootstrap": p_boot,
        "p_bootstrap_holm": holm(p_boot),
        "mcnemar_b": b,
        "mcnemar_c": c,
        "p_mcnemar": p_mcnemar,
        "p_mcnemar_holm": holm(p_mcnemar),
    })
    frame["significant"] = frame["p_bootstrap_holm"] < alpha
    return frame


def rank_groups(accuracy: dict, pairs) -> dict:
    """Group numbers (1 = best) from ``accuracy`` (name -> accuracy) and a pairs frame.

    Names are walked by accuracy, descending (ties in the order given). Group 1
    starts with the best name, its leader; each next name joins the current group
    when its difference to the group's leader is not significant (per
    ``pairs.significant``), else it starts the next group and leads it. So the
    poolers in one group are not significantly worse than the group's leader
    (members may still differ significantly from each other).
    """
    significant = {
        frozenset((a, b)): bool(s) for a, b, s in zip(pairs["a"], pairs["b"], pairs["significant"])
    }
    names = sorted(accuracy, key=lambda name: -accuracy[name])  # sorted() is stable: ties keep order
    groups, group, leader = {}, 0, None
    for name in names:
        if leader is None or _is_significant(significant, leader, name):
            group, leader = group + 1, name
        groups[name] = group
    return groups


def _is_significant(significant: dict, a: str, b: str) -> bool:
    try:
        return significant[frozenset((a, b))]
    except KeyError:
        raise ValueError(f"pairs has no row comparing '{a}' with '{b}'") from None


def _labels(y_true) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y_true must be a 1-D array of integer label ids, got shape {y.shape} "
                         f"dtype {y.dtype}")
    if y.size == 0:
        raise ValueError("y_true is empty: no test items to compare on")
    return y


def _correctness(probabilities: dict, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(correct, ensemble)``, both ``(n, K)``: correctness averaged over seeds, and
    whether the seed-ensemble prediction is right, for each of the ``K`` names."""
    n = y.size
    num_labels = None
    correct, ensemble = [], []
    for name, probs in probabilities.items():
        probs = np.asarray(probs, dtype=float)
        if probs.ndim != 3 or probs.shape[0] < 1:
            raise ValueError(f"probabilities['{name}'] must be (seeds, n, C) with at least one seed, "
                             f"got shape {probs.shape}")
        if probs.shape[1] != n:
            raise ValueError(f"probabilities['{name}'] has {probs.shape[1]} test items but y_true has {n}")
        num_labels = probs.shape[2] if num_labels is None else num_labels
        if probs.shape[2] != num_labels:
            raise ValueError(f"probabilities['{name}'] has {probs.shape[2]} labels, the names before it "
                             f"have {num_labels}")
        correct.append((probs.argmax(axis=2) == y).mean(axis=0))
        ensemble.append(probs.mean(axis=0).argmax(axis=1) == y)
    if y.max() >= num_labels or y.min() < 0:
        raise ValueError(f"y_true has label ids outside 0..{num_labels - 1}")
    return np.column_stack(correct), np.column_stack(ensemble)


def _bootstrap_accuracy(correct: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """``(n_boot, K)`` accuracies on item resamples, the same resamples for every name."""
    n = correct.shape[0]
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ENTRIES // n)
    out = np.empty((n_boot, correct.shape[1]))
    for start in range(0, n_boot, chunk):
        rows = min(start + chunk, n_boot) - start
        # n items drawn with replacement per resample, counted per item: the
        # same distribution as a multinomial draw, several times faster than numpy's.
        drawn = rng.integers(0, n, size=(rows, n))
        drawn += np.arange(rows)[:, None] * n
        counts = np.bincount(drawn.ravel(), minlength=rows * n).reshape(rows, n)
        out[start : start + rows] = counts @ correct / n
    return out


def _bootstrap_pairs(boot, ia, ib, diff, alpha):
    """Percentile interval and two-sided p-value of ``boot[:, a] - boot[:, b]`` per pair."""
    from scipy import stats

    n_boot = boot.shape[0]
    low, high, p = (np.empty(len(ia)) for _ in range(3))
    step = max(1, _PAIR_CHUNK_ENTRIES // n_boot)
    for start in range(0, len(ia), step):
        sl = slice(start, start + step)
        d = boot[:, ia[sl]] - boot[:, ib[sl]]  # (B, pairs)
        low[sl], high[sl] = np.quantile(d, [alpha / 2, 1 - alpha / 2], axis=0)
        # Normal approximation with the bootstrap standard error: unlike counting
        # resamples, it can go below 1/(B + 1), which a Holm correction over
        # hundreds of pairs needs.
        se = d.std(axis=0, ddof=1) if n_boot > 1 else np.zeros(d.shape[1])
        observed = np.abs(diff[sl])
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(se > 0, observed / se, np.where(observed > 0, np.inf, 0.0))
        p[sl] = np.minimum(1.0, 2 * stats.norm.sf(z))
    return low, high, p


def _mcnemar(ensemble, ia, ib):
    """``(b, c, p)`` per pair: items only ``a`` gets right, only ``b`` does, exact p."""
    from scipy import stats

    right = ensemble.astype(np.int64)
    only = right.T @ (1 - right)  # only[i, j]: items name i gets right and name j wrong
    b, c = only[ia, ib], only[ib, ia]
    cache = {}
    p = np.empty(len(ia))
    for k, (bk, ck) in enumerate(zip(b.tolist(), c.tolist())):
        if (bk, ck) not in cache:
            cache[bk, ck] = 1.0 if bk + ck == 0 else float(stats.binomtest(bk, bk + ck, 0.5).pvalue)
        p[k] = cache[bk, ck]
    return b, c, p
