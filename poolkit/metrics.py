"""The metrics every head is scored on (scikit-learn), declared once each.

A metric is a :class:`Metric` in :data:`METRICS`: a name (the results column),
whether higher is better, and a function of a :class:`Scored` (test labels and
predicted probabilities, with the predicted labels and the macro precision /
recall / F1 computed once for all metrics). Everything else derives from the
declarations: the columns of results.csv and summary.csv, the best-per-metric
marks, ``poolkit plot --metric`` and its help. The first metric is the primary
one: it ranks the summary and its interval is shown in the printed table.
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


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    compute: Callable[[Scored], float]
    #: one line for help texts
    about: str


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
           "share of test items whose most probable label is right"),
    Metric("f1_macro", True, lambda s: s.macro[2], "F1 averaged over labels"),
    Metric("precision_macro", True, lambda s: s.macro[0], "precision averaged over labels"),
    Metric("recall_macro", True, lambda s: s.macro[1], "recall averaged over labels"),
    Metric("mcc", True, lambda s: s.sk.matthews_corrcoef(s.y_true, s.predicted),
           "Matthews correlation coefficient"),
    Metric("roc_auc", True, _roc_auc, "ROC AUC (one-vs-rest macro for more than two labels)"),
    Metric("log_loss", False,
           lambda s: s.sk.log_loss(s.y_true, s.probabilities, labels=s.labels),
           "cross-entropy of the predicted probabilities"),
)}
PRIMARY = next(iter(METRICS))


def compute_metrics(y_true: np.ndarray, probabilities: np.ndarray) -> dict:
    """Every metric of :data:`METRICS` for ``y_true`` ``(n,)`` label ids and
    ``probabilities`` ``(n, C)``, as floats in declaration order."""
    import sklearn

    scored = Scored(y_true, probabilities)
    # The inputs are poolkit's own (label ids, softmax rows): skipping sklearn's
    # argument and finiteness checks takes a good part off each head's scoring.
    with sklearn.config_context(skip_parameter_validation=True, assume_finite=True):
        return {name: float(metric.compute(scored)) for name, metric in METRICS.items()}
