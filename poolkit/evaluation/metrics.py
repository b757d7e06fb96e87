"""The metrics every head is scored on (scikit-learn's), declared once each.

A metric is a :class:`Metric` in :data:`METRICS`: a name (the results column),
whether higher is better, its scikit-learn function of a :class:`Scored` (test
labels and predicted probabilities, with the predicted labels and the macro
precision / recall / F1 computed once for all metrics), and the same metric of
many weighted rows of the items at once (a function of a :class:`Weighted`: the
rows' confusion counts, per-item losses and ranks). Heads, folds and bootstrap
resamples are all scored through the weighted form (:func:`score_by_fold`), which
the tests hold to scikit-learn's functions.
Everything else derives from the declarations: the columns of results.csv,
summary.csv and pairs.csv, the best-per-metric marks, ``--metric`` and its
help. The first metric is the default primary one (``--metric``): it ranks
the summary and forms the groups.
"""

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np


@dataclass
class Scored:
    """One head's test predictions: ``y_true`` ``(n,)`` label ids, ``probabilities``
    ``(n, C)`` (columns in label-id order)."""

    y_true: np.ndarray
    probabilities: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        return np.arange(self.probabilities.shape[1])

    @property
    def sk(self):
        """``sklearn.metrics``, imported on first use (``poolkit --help`` stays fast)."""
        from sklearn import metrics

        return metrics

    @cached_property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @cached_property
    def macro(self) -> tuple:
        """``(precision, recall, f1)``, macro-averaged over all labels: one sklearn
        call for the three (its input checks cost more than the maths)."""
        precision, recall, f1, _ = self.sk.precision_recall_fscore_support(
            self.y_true, self.predicted, labels=self.labels, average="macro", zero_division=0)
        return precision, recall, f1


#: Entries of one group's counts in :func:`confusions` (float64: 64 MiB).
_CONFUSION_ENTRIES = 1 << 23

#: Negatives x positives up to which :meth:`Weighted._auc` takes the pairwise matmul
#: (faster to about 500 of each; beyond it the cumulative sums are).
_PAIRWISE_AUC = 1 << 18


class Resamples:
    """``B`` weighted resamples of ``n`` items with labels ``y_true`` ``(n,)``:
    ``weights`` ``(B, n)`` is how often each resample draws each item (a row of ones is
    the items themselves). Holds what every head's metrics read of the labels and
    weights alone, computed once for all heads."""

    def __init__(self, y_true: np.ndarray, weights: np.ndarray):
        self.y_true, self.weights = y_true, weights
        self._sides = {}

    @cached_property
    def by_item(self) -> np.ndarray:
        """``weights.T`` as a C-contiguous float32 ``(n, B)``: the AUC gathers items,
        which is fast along rows."""
        return np.ascontiguousarray(self.weights.T, dtype=np.float32)

    @cached_property
    def total(self) -> np.ndarray:
        """``(B,)`` items drawn."""
        return self.weights.sum(axis=1)

    def part(self, items: np.ndarray) -> "Resamples":
        """The resamples of ``items`` alone (a cross-fitted fold's)."""
        part = Resamples(self.y_true[items], self.weights[:, items])
        part.by_item = np.ascontiguousarray(self.by_item[items])
        return part

    def sides(self, label: int) -> tuple:
        """``(negatives, positives, drawn, pairs)`` of one label: the items that are not /
        are the label, each side's ``(items, B)`` rows of :attr:`by_item`, and ``(B,)``
        how many (negative, positive) pairs each resample draws."""
        if label not in self._sides:
            positive = self.y_true == label
            negatives, positives = np.flatnonzero(~positive), np.flatnonzero(positive)
            drawn = self.by_item[negatives], self.by_item[positives]
            pairs = drawn[0].sum(axis=0, dtype=np.float64) * drawn[1].sum(axis=0, dtype=np.float64)
            self._sides[label] = negatives, positives, drawn, pairs
        return self._sides[label]


class Weighted:
    """One head's predictions ``probabilities`` ``(n, C)`` under the :class:`Resamples`
    ``resamples`` at once. Each property is ``(B, ...)``; what several metrics read is
    computed once."""

    def __init__(self, resamples: Resamples, probabilities: np.ndarray,
                 confusion: np.ndarray | None = None):
        self.resamples, self.probabilities = resamples, probabilities
        self.y_true, self.weights = resamples.y_true, resamples.weights
        self.num_labels = probabilities.shape[1]
        if confusion is not None:  # computed with other heads' (:func:`confusions`)
            self.confusion = confusion

    @property
    def total(self) -> np.ndarray:
        """``(B,)`` items drawn."""
        return self.resamples.total

    @cached_property
    def confusion(self) -> np.ndarray:
        """``(B, C, C)`` weighted counts of (true label, predicted label)."""
        return confusions(self.y_true, [self.probabilities], self.weights)[0]

    @cached_property
    def per_label(self) -> tuple:
        """``(true positives, predicted, actual)``, each ``(B, C)``."""
        conf = self.confusion
        return np.diagonal(conf, axis1=1, axis2=2), conf.sum(axis=1), conf.sum(axis=2)

    def log_loss(self) -> np.ndarray:
        """Mean cross-entropy, probabilities clipped to ``[eps, 1 - eps]`` as sklearn does."""
        eps = np.finfo(self.probabilities.dtype).eps
        p = np.clip(self.probabilities[np.arange(len(self.y_true)), self.y_true], eps, 1 - eps)
        return (self.weights @ -np.log(p)) / self.total

    def roc_auc(self) -> np.ndarray:
        """ROC AUC (one-vs-rest macro for more than two labels): the weighted share of
        (positive, negative) pairs ranked right, ties counting half, as sklearn's area.
        NaN where a resample lacks a label's positives or negatives."""
        columns = [1] if self.num_labels == 2 else range(self.num_labels)
        return np.mean([self._auc(self.probabilities[:, c], c) for c in columns], axis=0)

    def _auc(self, scores: np.ndarray, label: int) -> np.ndarray:
        negatives, positives, drawn, pairs = self.resamples.sides(label)
        if len(negatives) * len(positives) <= _PAIRWISE_AUC:
            return self._auc_pairwise(scores, negatives, positives, drawn, pairs)
        order = np.argsort(scores[negatives], kind="stable")
        ranked = scores[negatives][order]
        # Per positive: the negatives ranked strictly lower, and those tied with it.
        lower = np.searchsorted(ranked, scores[positives], side="left")
        upto = np.searchsorted(ranked, scores[positives], side="right")
        # Item-major (items, B) float32: row gathers, exact integer counts and sums.
        cumulative = np.zeros((len(negatives) + 1, len(self.weights)), dtype=np.float32)
        np.cumsum(drawn[0][order], axis=0, out=cumulative[1:])
        below = cumulative[lower]
        credit = below + (cumulative[upto] - below) / 2
        hits = (drawn[1] * credit).sum(axis=0, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(pairs > 0, hits / pairs, np.nan)

    @staticmethod
    def _auc_pairwise(scores, negatives, positives, drawn, pairs) -> np.ndarray:
        """:meth:`_auc` from every (negative, positive) pair's credit (1 ranked right,
        1/2 tied) as one matmul: faster on a few hundred items, the same bits, since every
        sum is of integers and halves far below float32's 2**24."""
        below, above = scores[negatives][:, None], scores[positives][None, :]
        credit = (below < above).astype(np.float32) + np.float32(0.5) * (below == above)
        hits = credit @ drawn[1]
        hits *= drawn[0]
        # Half-integers summed exactly in float32 while below 2**23: every partial sum is
        # at most its resample's pair count.
        exact = pairs.max(initial=0) < 1 << 22
        hits = hits.sum(axis=0).astype(np.float64) if exact else hits.sum(axis=0, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(pairs > 0, hits / pairs, np.nan)


def confusions(y_true: np.ndarray, probabilities: list, weights: np.ndarray) -> list:
    """Each head's :attr:`Weighted.confusion`, ``(B, C, C)`` per ``(n, C)`` array of
    ``probabilities``, from one matmul per group of heads (weighted counts are exact,
    so the same values as one head at a time, in a fraction of the memory passes).
    Groups hold the result to about 64 MiB."""
    if not probabilities:
        return []
    n, c = probabilities[0].shape
    rows = np.arange(n)
    group = max(1, _CONFUSION_ENTRIES // max(1, len(weights) * c * c))
    out = []
    for start in range(0, len(probabilities), group):
        heads = probabilities[start : start + group]
        onehot = np.zeros((n, len(heads) * c * c), dtype=weights.dtype)
        for h, p in enumerate(heads):
            onehot[rows, h * c * c + y_true * c + p.argmax(axis=1)] = 1
        counts = (weights @ onehot).reshape(len(weights), len(heads), c, c)
        out.extend(np.ascontiguousarray(counts[:, h]) for h in range(len(heads)))
    return out


def _macro(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Mean over labels of ``numerator / denominator``, 0 where the denominator is 0
    (sklearn's ``zero_division=0``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / denominator, 0.0).mean(axis=1)


def _mcc(w: Weighted) -> np.ndarray:
    """Matthews correlation from the confusion counts (sklearn's multi-label formula)."""
    tp, predicted, actual = w.per_label
    correct, total = tp.sum(axis=1), w.total
    covariance = correct * total - (predicted * actual).sum(axis=1)
    scale = np.sqrt((total**2 - (predicted**2).sum(axis=1)) * (total**2 - (actual**2).sum(axis=1)))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(scale > 0, covariance / scale, 0.0)


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    compute: Callable[[Scored], float]
    #: one line for help texts
    about: str
    #: the metric of many weighted resamples at once, ``(B,)`` from a :class:`Weighted`;
    #: ``None``: the bootstrap scores resamples one by one with ``compute`` (slower)
    weighted: Callable[[Weighted], np.ndarray] | None = None
    #: under cross-fitting, scored on each fold's items and averaged over the folds, not
    #: on all items at once: a ranking metric of items scored by different folds' heads
    #: would rank one head's scores against another's (whose offsets differ), which
    #: measures neither head (Forman and Scholz, 2010, "Apples-to-apples in
    #: cross-validation studies": average AUC over folds, pool the counts of the others)
    per_fold: bool = False


def _roc_auc(s: Scored) -> float:
    """One-vs-rest macro for more than two labels; NaN when a label has no test example."""
    try:
        if s.probabilities.shape[1] == 2:
            return s.sk.roc_auc_score(s.y_true, s.probabilities[:, 1])
        return s.sk.roc_auc_score(s.y_true, s.probabilities, multi_class="ovr",
                                  average="macro", labels=s.labels)
    except ValueError:  # a label missing from the test split
        return float("nan")


#: Metric name -> :class:`Metric`, in column order; the first is the primary metric.
METRICS = {m.name: m for m in (
    Metric("accuracy", True, lambda s: s.sk.accuracy_score(s.y_true, s.predicted),
           "share of test items whose most probable label is right",
           lambda w: w.per_label[0].sum(axis=1) / w.total),
    Metric("f1_macro", True, lambda s: s.macro[2], "F1 averaged over labels",
           lambda w: _macro(2 * w.per_label[0], w.per_label[1] + w.per_label[2])),
    Metric("precision_macro", True, lambda s: s.macro[0], "precision averaged over labels",
           lambda w: _macro(w.per_label[0], w.per_label[1])),
    Metric("recall_macro", True, lambda s: s.macro[1], "recall averaged over labels",
           lambda w: _macro(w.per_label[0], w.per_label[2])),
    Metric("mcc", True, lambda s: s.sk.matthews_corrcoef(s.y_true, s.predicted),
           "Matthews correlation coefficient", _mcc),
    Metric("roc_auc", True, _roc_auc, "ROC AUC (one-vs-rest macro for more than two labels; "
           "cross-fitted: the mean over folds)", lambda w: w.roc_auc(), per_fold=True),
    Metric("log_loss", False,
           lambda s: s.sk.log_loss(s.y_true, s.probabilities, labels=s.labels),
           "cross-entropy of the predicted probabilities", lambda w: w.log_loss()),
)}
PRIMARY = next(iter(METRICS))


def compute_metrics(y_true: np.ndarray, probabilities: np.ndarray, folds=None,
                    metrics=None) -> dict:
    """Every metric of ``metrics`` (default :data:`METRICS`) for ``y_true`` ``(n,)`` label
    ids and ``probabilities`` ``(n, C)``, as floats in declaration order. ``folds``
    ``(n,)``: the cross-fitted fold that scored each item; a :attr:`Metric.per_fold`
    metric is then the mean of its value on each fold's items."""
    metrics = metrics or METRICS
    return dict(zip(metrics, score_by_fold(y_true, probabilities, folds, metrics)[0].tolist()))


def score_by_fold(y_true: np.ndarray, probabilities: np.ndarray, folds=None,
                  metrics=None) -> tuple:
    """``(values, by_fold)``: every metric of ``metrics`` on all items as
    :func:`compute_metrics` has them, ``(M,)``, and on each fold's items alone,
    ``(F, M)`` (``F`` = 0 without two folds or more).

    All from one :class:`Weighted` whose rows are the items and each fold's (the
    arithmetic the bootstrap uses): the same values as scikit-learn's functions
    (``Metric.compute``; tests hold every metric to them), without their input checks,
    which cost ~50 ms per head and fold, most of a comparison's time."""
    metrics = metrics or METRICS
    parts = fold_parts(folds)
    weights = np.zeros((1 + len(parts), len(y_true)))
    weights[0] = 1
    for row, items in enumerate(parts, start=1):
        weights[row, items] = 1
    weighted = Weighted(Resamples(y_true, weights), probabilities)
    columns = []
    for metric in metrics.values():
        if metric.weighted is not None:
            rows = np.asarray(metric.weighted(weighted), dtype=np.float64)
        else:  # a metric with only its scikit-learn function: each row's items in turn
            rows = np.array([metric.compute(Scored(y_true[q], probabilities[q]))
                             for q in [np.arange(len(y_true)), *parts]])
        value = rows[1:].mean() if metric.per_fold and parts else rows[0]
        columns.append((value, rows[1:]))
    return (np.array([value for value, _ in columns]),
            np.stack([by_fold for _, by_fold in columns], axis=1))


def fold_parts(folds) -> list:
    """Each fold's item positions, for two folds or more; else ``[]``."""
    if folds is None:
        return []
    folds = np.asarray(folds)
    ids = np.unique(folds)
    return [np.flatnonzero(folds == f) for f in ids] if ids.size > 1 else []
