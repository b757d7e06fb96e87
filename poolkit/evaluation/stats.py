"""Uncertainty and significance: paired comparisons of feature sets on the same items.

Every feature set is scored on the same items (a test split, or every item out
of fold under cross-fitting), so feature sets are compared *paired*: one
bootstrap over the items, the same resamples for every feature set, gives each
metric's difference between two feature sets an interval and a p-value, and
each feature set's own interval (resampling its seeds too). McNemar's exact test
adds a second opinion on accuracy, on the seed-ensemble predictions.
"""

import math
import os
import warnings
import zlib
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from poolkit.evaluation.decisions import decide, rope_of, tost_p
from poolkit.evaluation.metrics import (
    METRICS,
    PRIMARY,
    Resamples,
    Scored,
    Weighted,
    confusions,
    fold_parts,
    score_by_fold,
)

#: Defaults of :func:`compare`, also quoted in :data:`METHODS`.
N_BOOT = 10_000
ALPHA = 0.05


def pair_columns(metrics=METRICS, primary: str = PRIMARY) -> tuple:
    """Columns of a pairs frame, in order: per metric the two values, their
    difference with its interval and bootstrap standard error, and the raw and
    Holm-corrected p-values; McNemar's test; then the primary metric's significance,
    its equivalence test (raw and Holm-corrected) and the pair's decision."""
    per_metric = [f"{m}_{part}" for m in metrics
                  for part in ("a", "b", "diff", "low", "high", "se", "p", "p_holm")]
    return ("a", "b", *per_metric, "mcnemar_b", "mcnemar_c", "p_mcnemar", "p_mcnemar_holm",
            "significant", f"{primary}_p_equivalent", f"{primary}_p_equivalent_holm",
            "decision")


#: Columns of the :func:`compare` pairs frame, in order.
PAIR_COLUMNS = pair_columns()

#: How the numbers are computed, for exports/README (states the defaults above).
METHODS = (
    "Each metric is scored per seed on the items every feature set predicts (under "
    "cross-fitting ROC-AUC as the mean of the folds' AUCs, the others on all items at once), "
    f"and averaged over seeds. One paired bootstrap over those items (B = {N_BOOT:,} "
    "resamples of the items, the same for every feature set; each resample's metric computed "
    "from its weighted confusion counts, per-item losses and ranks, as scikit-learn computes "
    "it on the items drawn; ROC-AUC's within each fold) gives: each feature set's 95% "
    "interval (percentiles of the metric over resamples "
    "of the items and of its seeds, so it covers both and stays in the metric's range), and "
    "for each pair and metric the difference a - b with a 95% percentile interval and a "
    "two-sided p-value from its bootstrap standard error, p = 2·Φ(−|d| / sd(d*)) (a normal "
    "approximation: a count of resamples could not go below 1/(B + 1), too coarse for a Holm "
    "correction over many pairs). Under cross-fitting that standard error also takes in the "
    "heads' own fits, which the item bootstrap holds fixed: the spread of the pair's "
    "difference between folds beyond what their items explain, scaled by 1/K + n_test/n_train "
    "(Nadeau and Bengio's correction for overlapping training sets), widens the standard "
    "error, and as that part is estimated from K folds the p-value and the interval take "
    "Student's t with Welch–Satterthwaite's degrees of freedom, (K − 1)·(V / V_fits)² "
    "(about K − 1 when the fits dominate, the normal when they add nothing). McNemar's "
    "exact (binomial) test is run on the seed-ensemble "
    "predictions (argmax of the probabilities averaged over seeds). Each metric's p-values are "
    "Holm–Bonferroni corrected over all pairs (or, with a baseline, over the comparisons with "
    f"it); a difference is significant when its corrected p on the primary metric is below "
    f"{ALPHA}. Groups are formed down the primary metric's ranking: a feature set joins the "
    "current group unless it is significantly worse than the group's leader (its best member), "
    "in which case it leads a new group, so feature sets in one group are not significantly "
    "worse than its leader."
)

# Item draws per chunk (int64 entries): bounds memory at ~64 MiB per copy.
# Chunking does not change the draws: the generator yields the same items either way.
_CHUNK_ENTRIES = 1 << 23

# Pairs per block of the pairwise differences' percentiles and standard errors.
_PAIR_BLOCK = 128


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
    made non-decreasing by a running maximum and clipped at 1. NaNs (a metric
    undefined on these items) stay NaN and do not count among the ``m`` tests.
    """
    p = np.asarray(p_values, dtype=float).ravel()
    adjusted = np.full(p.size, np.nan)
    known = np.flatnonzero(~np.isnan(p))
    m = known.size
    order = known[np.argsort(p[known], kind="stable")]
    scaled = p[order] * (m - np.arange(m))
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0) if m else scaled
    return adjusted


@dataclass
class Comparison:
    """What :func:`compare` finds: ``pairs`` (a frame, :data:`PAIR_COLUMNS`),
    ``values`` ``{name: {metric: mean over seeds}}``, ``intervals`` ``{name:
    {metric: (low, high)}}`` over resamples of the items and the seeds."""

    pairs: object
    values: dict
    intervals: dict


def compare(probabilities: dict, y_true, *, n_boot: int = N_BOOT, alpha: float = ALPHA,
            seed: int = 0, primary: str = PRIMARY, baseline: str | None = None,
            metrics=None, folds=None, test_train_ratio: float | None = None,
            rope: float | None = None) -> Comparison:
    """Every feature set's metrics with intervals, and pairs of them compared on the
    same items, for every metric.

    ``probabilities[name]`` is ``(seeds, n, C)``: each seed's predicted probabilities for
    the same ``n`` items (seed counts may differ between names); ``y_true`` is ``(n,)``
    label ids. ``metrics`` (default :data:`~poolkit.evaluation.metrics.METRICS`) are
    scored per seed and averaged. The bootstrap draws ``n_boot`` resamples of the items
    (a ``numpy`` Generator seeded by ``seed``), shared by all names. Pairs: every pair of
    names, or with ``baseline`` each other name against it; p-values Holm-corrected per
    metric; ``significant``: the ``primary`` metric's corrected p below ``alpha``. Rows:
    names ranked by the primary metric (best first, ties in the order given), ``a`` above
    ``b`` (with a baseline: ``b`` is the baseline). See :data:`METHODS`. ``folds``
    ``(n,)`` (the cross-fitted fold that scored each item) adds the variance of the heads'
    own fits, which the item bootstrap cannot see (:class:`_FoldRefits`;
    ``test_train_ratio``: a fold's test items over its training items). ``rope``: the
    decisions' region of practical equivalence (:mod:`~poolkit.evaluation.decisions`).
    """
    import pandas as pd

    metrics = dict(metrics or METRICS)
    _check_arguments(n_boot, primary, metrics, baseline, probabilities)
    names = list(probabilities)
    y = _labels(y_true)
    probs = _checked(probabilities, y)

    # name -> per seed: every metric on all items (what results.csv holds), (M,), and on
    # each fold's items, (F, M); values: name -> metric -> mean over seeds
    scored = {name: [score_by_fold(y, p, folds, metrics) for p in probs[name]]
              for name in names}
    values = {name: dict(zip(metrics, np.nanmean([v for v, _ in scored[name]], axis=0)))
              for name in names}
    boot = _bootstrap(probs, y, metrics, n_boot, seed, fold_parts(folds))  # name -> (B, S, M)
    intervals = {name: _interval(boot[name], name, metrics, n_boot, seed, alpha)
                 for name in names}
    if len(names) < 2:
        return Comparison(pd.DataFrame({c: [] for c in pair_columns(metrics, primary)}), values,
                          intervals)

    ia, ib = _pair_indices(names, values, metrics[primary], primary, baseline)
    columns = {"a": [names[i] for i in ia], "b": [names[i] for i in ib]}
    # per metric: each pair's a and b values, and their difference
    sides = {m: (np.array([values[names[i]][m] for i in ia]),
                 np.array([values[names[j]][m] for j in ib])) for m in metrics}
    diffs = [a - b for a, b in sides.values()]
    spreads = _resampled_differences(boot, names, ia, ib, diffs, alpha)
    refits = _FoldRefits(folds, scored, names, ia, ib, test_train_ratio, alpha)
    dfs = {}
    for m_index, m in enumerate(metrics):
        low, high, p, se, dfs[m] = refits.widened(m_index, diffs[m_index], *spreads[m_index])
        columns.update({f"{m}_a": sides[m][0], f"{m}_b": sides[m][1], f"{m}_diff": diffs[m_index],
                        f"{m}_low": low, f"{m}_high": high, f"{m}_se": se, f"{m}_p": p,
                        f"{m}_p_holm": holm(p)})
    frame = pd.DataFrame({**columns, **_mcnemar_columns(probs, names, y, ia, ib)})
    _decided(frame, primary, metrics[primary].higher_is_better, dfs[primary],
             rope_of(rope, primary), alpha)
    return Comparison(frame, values, intervals)


def _decided(frame, primary: str, higher_is_better: bool, df, rope: float, alpha: float) -> None:
    """Add to a pairs ``frame`` whether the primary metric's difference is significant,
    its equivalence test (TOST within ``±rope``, Student's t with ``df`` as its two-sided
    test; raw and Holm-corrected) and each pair's ``decision``."""
    frame["significant"] = frame[f"{primary}_p_holm"] < alpha
    (frame[f"{primary}_p_equivalent"], frame[f"{primary}_p_equivalent_holm"],
     frame["decision"]) = decisions(frame[f"{primary}_diff"], frame[f"{primary}_se"],
                                    frame[f"{primary}_p_holm"], df, rope, alpha,
                                    higher_is_better)


def decisions(diff, se, p_holm, df, rope: float, alpha: float, higher_is_better: bool) -> tuple:
    """``(p_equivalent, p_equivalent_holm, decision)`` of pairs with differences ``diff``,
    standard errors ``se`` (Student's t with ``df``) and Holm-corrected two-sided p-values:
    their equivalence test within ``±rope`` (TOST), Holm over the pairs, and each pair's
    decision (:func:`~poolkit.evaluation.decisions.decide`); on one task and across tasks."""
    equivalence = tost_p(diff, se, rope, df)
    corrected = holm(equivalence)
    return (equivalence, corrected,
            decide(diff, p_holm, corrected, rope, alpha, higher_is_better))


def _check_arguments(n_boot: int, primary: str, metrics: dict, baseline, names) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    if primary not in metrics:
        raise ValueError(f"primary metric '{primary}' is not among {', '.join(metrics)}")
    if baseline is not None and baseline not in names:
        raise ValueError(f"baseline '{baseline}' is not among {', '.join(names)}")


def _interval(boot, name: str, metrics, n_boot: int, seed: int, alpha: float) -> dict:
    """``{metric: (low, high)}``: one name's interval over resamples of the items and of
    its seeds (``boot`` ``(B, S, M)``), its seed draws its own, so an interval does not
    depend on the other names."""
    seeds = boot.shape[1]
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    draws = rng.integers(0, seeds, size=(n_boot, seeds))
    picked = np.take_along_axis(boot, draws[:, :, None], axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a metric undefined on a resample
        resampled = np.nanmean(picked, axis=1)
    low, high = _quantiles(resampled, alpha)
    return {m: (float(low[i]), float(high[i])) for i, m in enumerate(metrics)}


def _pair_indices(names: list, values: dict, metric, primary: str, baseline) -> tuple:
    """``(ia, ib)``: the pairs' indices into ``names``, ranked by the primary metric (``a``
    above ``b``), or each other name against ``baseline``."""
    sign = 1 if metric.higher_is_better else -1
    rank = sorted(range(len(names)), key=lambda i: -sign * values[names[i]][primary])
    if baseline is None:
        pairs = [(rank[i], rank[j]) for i in range(len(rank)) for j in range(i + 1, len(rank))]
    else:
        base = names.index(baseline)
        pairs = [(i, base) for i in rank if i != base]
    return tuple(np.array(side, dtype=int) for side in zip(*pairs))


def _resampled_differences(boot: dict, names: list, ia, ib, diffs: list, alpha: float) -> list:
    """Per metric, ``[low, high, p, se]`` of each pair's difference over the resamples."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a metric undefined on a resample
        means = np.stack([np.nanmean(boot[name], axis=1) for name in names], axis=1)  # (B, K, M)
    count = means.shape[2]
    # (K, B) per metric: each name's resamples contiguous, so pairs gather by rows
    by_metric = [np.ascontiguousarray(means[:, :, i].T) for i in range(count)]
    blocks = [slice(start, start + _PAIR_BLOCK) for start in range(0, len(ia), _PAIR_BLOCK)]

    def resampled(job):
        """``(low, high, p, se)`` of one metric's difference for a block of pairs over the
        resamples. ``d`` ``(B, pairs)`` is laid out pair-major, as numpy lays out a
        fancy-indexed column gather: each pair's resamples contiguous (its sums' bits)."""
        m, block = job
        d = (by_metric[m][ia[block]] - by_metric[m][ib[block]]).T
        return (*_quantiles(d, alpha), *_p_values(d, diffs[m][block]))

    # Blocks of pairs reuse memory (fresh pages cost more than the sums); numpy leaves the
    # GIL in these sorts and sums: one thread per core. Each pair's numbers are its own,
    # whichever block or thread computes them.
    from concurrent.futures import ThreadPoolExecutor  # (not for poolkit --help)

    jobs = [(m, block) for block in blocks for m in range(count)]
    with ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
        done = list(pool.map(resampled, jobs))
    return [[np.concatenate([found[part] for found in done[m::count]]) for part in range(4)]
            for m in range(count)]


class _FoldRefits:
    """Under cross-fitting (``folds``: the fold that scored each item), each pair's
    standard error widened by the heads' own fit variance, from the spread of its
    difference between folds (:func:`refit_variance`); nothing to add otherwise."""

    def __init__(self, folds, scored: dict, names: list, ia, ib, test_train_ratio, alpha):
        self.ia, self.ib, self.names = ia, ib, names
        self.ratio, self.alpha = test_train_ratio, alpha
        fold_ids = np.unique(folds) if folds is not None else np.zeros(1)
        self.active = fold_ids.size > 1
        if self.active:  # name -> (F, M): each fold's metrics, mean over seeds
            parts = [np.flatnonzero(np.asarray(folds) == f) for f in fold_ids]
            self.sizes = np.array([part.size for part in parts])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a metric undefined on a fold
                self.per_fold = {name: np.nanmean([by_fold for _, by_fold in scored[name]],
                                                  axis=0) for name in names}

    def widened(self, m_index: int, diff, low, high, p, se) -> tuple:
        """``(low, high, p, se, df)`` of metric ``m_index``'s differences, widened, and the
        degrees of freedom of their t (infinite: the normal)."""
        if not self.active:
            return low, high, p, se, np.full(len(diff), np.inf)
        from scipy import stats

        per_fold, names, alpha = self.per_fold, self.names, self.alpha
        by_fold = np.stack([per_fold[names[i]][:, m_index] - per_fold[names[j]][:, m_index]
                            for i, j in zip(self.ia, self.ib)], axis=1)  # (F, pairs)
        refit = refit_variance(by_fold, se, self.sizes, self.ratio)
        widened = np.sqrt(se ** 2 + refit.variance)
        # the t quantile over the normal one: the fits' variance is estimated from F folds
        tails = stats.t.ppf(1 - alpha / 2, refit.df) / stats.norm.ppf(1 - alpha / 2)
        with np.errstate(all="ignore"):
            stretch = np.where(se > 0, tails * widened / se, 1.0)
        low, high = diff - stretch * (diff - low), diff + stretch * (high - diff)
        return low, high, _t_p(diff, widened, refit.df), widened, refit.df


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


def _checked(probabilities: dict, y: np.ndarray) -> dict:
    """``probabilities`` as float arrays ``(seeds, n, C)``, their shapes checked."""
    n = y.size
    num_labels = None
    out = {}
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
        out[name] = probs
    if num_labels is not None and (y.max() >= num_labels or y.min() < 0):
        raise ValueError(f"y_true has label ids outside 0..{num_labels - 1}")
    return out


def _bootstrap(probs: dict, y: np.ndarray, metrics: dict, n_boot: int, seed: int,
               parts=()) -> dict:
    """``{name: (n_boot, seeds, metrics)}``: each metric of each seed's predictions on
    ``n_boot`` resamples of the items, the same resamples for every name. ``parts``:
    the cross-fitted folds' items, over which a per-fold metric is averaged."""
    n = y.size
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ENTRIES // n)
    out = {name: np.empty((n_boot, p.shape[0], len(metrics))) for name, p in probs.items()}
    for start in range(0, n_boot, chunk):
        rows = min(start + chunk, n_boot) - start
        # n items drawn with replacement per resample, counted per item: the
        # same distribution as a multinomial draw, several times faster than numpy's.
        drawn = rng.integers(0, n, size=(rows, n))
        drawn += np.arange(rows)[:, None] * n
        counts = np.bincount(drawn.ravel(), minlength=rows * n).reshape(rows, n).astype(float)
        resamples = Resamples(y, counts)
        # each fold's share of the resamples, cut once for every name and seed
        folds = [(q, resamples.part(q)) for q in parts]
        together = iter(confusions(y, [p for seeds in probs.values() for p in seeds], counts))
        for name, seeds in probs.items():
            for s, p in enumerate(seeds):
                weighted = Weighted(resamples, p, next(together))
                for m, metric in enumerate(metrics.values()):
                    if metric.per_fold and folds:  # the mean over folds of each fold's
                        value = np.mean([_resampled(metric, Weighted(part, p[q]))
                                         for q, part in folds], axis=0)
                    else:
                        value = _resampled(metric, weighted)
                    out[name][start : start + rows, s, m] = value
    return out


def _resampled(metric, weighted) -> np.ndarray:
    """``metric`` of a head's predictions under the resamples of ``weighted`` (a
    :class:`~poolkit.evaluation.metrics.Weighted`, shared between metrics)."""
    if metric.weighted is not None:
        return metric.weighted(weighted)
    # one resample at a time, as the metric's own function scores it
    y, p = weighted.y_true, weighted.probabilities
    return np.array([metric.compute(Scored(y[i], p[i])) for i in
                     (np.repeat(np.arange(len(y)), row.astype(int)) for row in weighted.weights)])


def _quantiles(samples: np.ndarray, alpha: float) -> tuple:
    """The ``alpha / 2`` and ``1 - alpha / 2`` percentiles of each column of ``samples``
    ``(B, columns)``, ignoring NaNs:
    ``np.nanquantile``'s values to the bit (its linear method on each column's
    values that are not NaN). Only the four order statistics either side of the two
    percentiles are needed: where no column has a NaN (nearly always) one partition
    finds them, in a third of a full sort's time; else each column is sorted."""
    valid = samples.shape[0] - np.isnan(samples).sum(axis=0)  # (columns,)
    columns = np.arange(samples.shape[1])
    ranks = []
    for level in (alpha / 2, 1 - alpha / 2):
        index = (valid - 1) * np.float64(level)
        previous = np.floor(index)
        gamma = index - previous
        below = np.clip(previous, 0, None).astype(np.intp)
        above = np.minimum(below + 1, np.maximum(valid - 1, 0))
        ranks.append((gamma, below, above))
    if (valid == samples.shape[0]).all() and samples.shape[0] > 0:
        ordered = np.partition(samples, np.unique([r[i] for r in ranks for i in (1, 2)]), axis=0)
    else:
        ordered = np.sort(samples, axis=0)  # NaNs sort last
    out = []
    for gamma, below, above in ranks:
        a, b = ordered[below, columns], ordered[above, columns]
        with np.errstate(all="ignore"):
            diff = b - a  # numpy's _lerp, so the bits are numpy's
            value = a + diff * gamma
            value = np.where(gamma >= 0.5, b - diff * (1 - gamma), value)
        out.append(np.where(valid > 0, value, np.nan))
    return out[0], out[1]


class Refit(NamedTuple):
    """What the heads' fits add to each pair's difference: ``variance`` ``(pairs,)``
    and the degrees of freedom ``df`` ``(pairs,)`` of the whole variance's estimate."""

    variance: np.ndarray
    df: np.ndarray


def refit_variance(by_fold, se, sizes, test_train_ratio=None) -> Refit:
    """The variance the heads' fits add to each pair's difference under cross-fitting,
    which the item bootstrap (heads held fixed) leaves out, and its degrees of freedom.

    ``by_fold`` ``(F, pairs)`` is each fold's difference on its own test items,
    ``se`` the bootstrap standard error of the whole difference, ``sizes`` the folds'
    test items. The folds' spread holds the items' variance (``se² · n / n_f`` for a
    fold of ``n_f`` of the ``n`` items) and the fits'; what the items do not explain
    (floored at 0) is the fits' variance per fold, which the mean over F folds keeps
    scaled by ``c = 1 / F + n_test / n_train`` (Nadeau and Bengio's correction: the
    folds' training sets overlap, so their fits are not independent).

    That part is estimated from F folds, so the whole variance ``V = se² + c · fits``
    has Welch-Satterthwaite's ``df = (F - 1) · (V / (c · fits))²`` (the items' part
    taken as known from the bootstrap's many resamples, the fits' part as F - 1
    degrees of freedom; infinite when the fits add nothing): about F - 1 when the fits
    dominate, many when the items do.
    """
    by_fold = np.asarray(by_fold, dtype=float)
    folds = by_fold.shape[0]
    sizes = np.asarray(sizes, dtype=float)
    se = np.asarray(se, dtype=float)
    ratio = test_train_ratio if test_train_ratio is not None else 1 / (folds - 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        spread = np.nan_to_num(np.nanvar(by_fold, axis=0, ddof=1), nan=0.0)
    items = se ** 2 * sizes.sum() * np.mean(1 / sizes)
    fits = np.maximum(spread - items, 0.0)
    scale = 1 / folds + ratio
    with np.errstate(all="ignore"):
        df = np.where(fits > 0, (folds - 1) * ((se ** 2 + scale * fits) / (scale * fits)) ** 2,
                      np.inf)
    return Refit(scale * fits, df)


def _t_p(diff: np.ndarray, se: np.ndarray, df) -> np.ndarray:
    """Two-sided p of ``diff`` given its standard error, Student's t with ``df``
    degrees of freedom (the normal where ``df`` is infinite; 0 when certain and not
    0, 1 when certain and 0)."""
    from scipy import stats

    with np.errstate(all="ignore"):
        observed = np.abs(diff)
        z = np.where(se > 0, observed / se, np.where(observed > 0, np.inf, 0.0))
        p = np.minimum(1.0, 2 * stats.t.sf(z, df))
    return np.where(np.isnan(diff) | np.isnan(se), np.nan, p)


def _p_values(d: np.ndarray, diff: np.ndarray) -> tuple:
    """``(p, se)``: two-sided p of each observed difference from its bootstrap
    standard error ``se``.

    Normal approximation with the bootstrap standard error: unlike counting
    resamples, it can go below 1/(B + 1), which a Holm correction over many pairs
    needs. A difference that never varies is certain (p 0) unless it is 0 (p 1).
    """
    n_boot = d.shape[0]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if n_boot == 1:
            se = np.zeros(d.shape[1])
        else:  # np.std's bits where no resample is NaN (most columns), nanstd's elsewhere
            gaps = np.isnan(d).any(axis=0)
            se = np.std(d, axis=0, ddof=1)
            if gaps.any():
                se[gaps] = np.nanstd(d[:, gaps], axis=0, ddof=1)
    return _t_p(diff, se, np.inf), se


def _mcnemar_columns(probs: dict, names: list, y, ia, ib) -> dict:
    """McNemar's test of each pair on the seed-ensemble predictions (argmax of the
    probabilities averaged over seeds): its discordant counts, p and Holm's p."""
    correct = np.column_stack([probs[n].mean(axis=0).argmax(axis=1) == y for n in names])
    b, c, p_mcnemar = _mcnemar(correct, ia, ib)
    return {"mcnemar_b": b, "mcnemar_c": c, "p_mcnemar": p_mcnemar,
            "p_mcnemar_holm": holm(p_mcnemar)}


def _mcnemar(ensemble, ia, ib):
    """``(b, c, p)`` per pair: items only ``a`` gets right, only ``b`` does, exact p."""
    right = ensemble.astype(np.int64)
    only = right.T @ (1 - right)  # only[i, j]: items name i gets right and name j wrong
    b, c = only[ia, ib], only[ib, ia]
    return b, c, binomial_p(b, c)


def binomial_p(b, c) -> np.ndarray:
    """Two-sided exact binomial p of ``b`` successes in ``b + c`` trials at 1/2, for arrays
    at once: ``scipy.stats.binomtest(b, b + c, 0.5).pvalue`` to the bit (1 where b = c).

    At 1/2 the distribution is symmetric, so binomtest's search for the outcomes on the
    far side that are no likelier than the one seen ends at the mirror image: the p is
    ``P(X <= min) + P(X >= max)``, the same two scipy calls binomtest makes, vectorized.
    """
    from scipy import stats

    b, c = np.asarray(b, dtype=np.int64), np.asarray(c, dtype=np.int64)
    n, low, high = b + c, np.minimum(b, c), np.maximum(b, c)
    with np.errstate(all="ignore"):
        p = stats.binom.cdf(low, n, 0.5) + stats.binom.sf(high - 1, n, 0.5)
    return np.where(b == c, 1.0, np.minimum(1.0, p))
