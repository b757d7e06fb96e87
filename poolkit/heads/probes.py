"""Published probes on fixed features: logistic regression as SentEval and MTEB fit it.

Two recipes, for the ``senteval`` and ``mteb`` protocols
(:mod:`poolkit.evaluation.protocols`), so poolkit's numbers can be set beside the ones
researchers know; poolkit adds the intervals and the paired tests:

- ``senteval``: SentEval's ``InnerKFoldClassifier`` (sklearn branch): within
  each outer training fold, an inner stratified k-fold over the regularization
  grid ``C`` in ``2**-2 .. 2**3`` picks ``C`` by mean inner accuracy; the probe
  is refitted with it on the whole training fold. The 66 logistic regressions
  of a fold (6 values of ``C`` on 10 inner folds, and the 6 refits) are solved
  at once by :mod:`poolkit.heads.logistic`, to their optimum: scikit-learn's
  ``LogisticRegression(C)`` objective, which SentEval fits with lbfgs (stopped
  there at 100 iterations, before the optimum on some features).
- ``mteb``: MTEB's classification evaluator: scikit-learn's
  ``LogisticRegression(max_iter=100)`` fitted on ``samples_per_label`` items per
  label drawn from the training split, one experiment per seed (the seed draws
  the items), the test split fixed; lbfgs stops at its 100 iterations as in
  MTEB (its convergence warnings are silenced).

Features go in as they are: neither recipe standardizes them.
"""

import warnings

import numpy as np

from poolkit.errors import one_line
from poolkit.heads import logistic
from poolkit.heads.base import FailedHead, HeadTask, TrainedHead

#: SentEval's grid for scikit-learn's C (``InnerKFoldClassifier``).
SENTEVAL_C = tuple(2.0**t for t in range(-2, 4))
#: MTEB's default number of training items per label.
MTEB_SAMPLES_PER_LABEL = 8


class ProbeHeads:
    """The :class:`~poolkit.heads.base.HeadKind` of the published probes, on fixed
    ``features`` (``{feature set id: (N, D)}``); ``recipe`` is ``"senteval"``
    (with ``inner_folds``) or ``"mteb"`` (with ``samples_per_label``)."""

    def __init__(self, features: dict, recipe: str, inner_folds: int = 10,
                 samples_per_label: int = MTEB_SAMPLES_PER_LABEL):
        self.features, self.recipe = features, recipe
        self.inner_folds, self.samples_per_label = inner_folds, samples_per_label

    def wants(self, feature_set) -> bool:
        return not feature_set.trainable and not feature_set.finetuned

    def train(self, task: HeadTask, jobs: list):
        from sklearn.exceptions import ConvergenceWarning

        for feature_set, seeds in jobs:
            x = self.features[feature_set.id]
            for seed in seeds:
                try:
                    with warnings.catch_warnings():
                        # lbfgs stopping at max_iter, as in the published recipes: not news
                        warnings.simplefilter("ignore", ConvergenceWarning)
                        probe = self._fit(x, task, seed)
                except ValueError as exc:  # e.g. an inner fold too small for a label
                    yield FailedHead(feature_set.id, f"{self.recipe} probe: {one_line(exc)}")
                    break
                probs = _all_labels(probe, x[task.test], task.num_labels)
                yield TrainedHead(feature_set.id, seed, probs, 0, 0, float("nan"),
                                  fold=task.fold)

    def _fit(self, x, task: HeadTask, seed: int):
        if self.recipe == "senteval":
            return senteval_probe(x, task.labels, task.train, SENTEVAL_C, self.inner_folds, seed)
        from sklearn.linear_model import LogisticRegression

        y = task.labels
        rows = undersample(y, np.concatenate([task.train, task.validation]),
                           self.samples_per_label, seed)
        return LogisticRegression(max_iter=100, random_state=seed).fit(x[rows], y[rows])


class SentEvalProbe:
    """The refitted probe of :func:`senteval_probe`: ``C`` (the inner folds' choice),
    ``classes_`` (the label ids it was fitted on), ``predict_proba``, and
    ``scores`` (mean inner accuracy per ``C`` of the grid)."""

    def __init__(self, fitted, index: int, classes, c: float, scores):
        self.fitted, self.index, self.classes_, self.C, self.scores = \
            fitted, index, classes, c, scores

    def predict_proba(self, x) -> np.ndarray:
        return self.fitted.predict_proba(x)[self.index]


#: How far the inner folds' problems are solved (the largest gradient entry of the scaled
#: objective): they only choose ``C``. scikit-learn's own default, which SentEval runs
#: with, stops at 1e-4, which chose another ``C`` than the optimum on 2 of 20 outer folds
#: of the benchmark's cases; 1e-5 chose the optimum's on all 80 (four cases, two inner
#: seeds; 1e-6 as well, at 1.2-1.5x the Hessian products).
INNER_TOL = 1e-5


def senteval_probe(x, y, rows, grid, folds: int, seed: int,
                   inner_tol: float = INNER_TOL) -> SentEvalProbe:
    """SentEval's inner cross-validation on ``(x[rows], y[rows])``: the ``C`` of
    ``grid`` with the best mean accuracy over a stratified ``folds``-fold split
    (ties: the first), refitted on all of ``rows``.

    The inner folds only choose ``C``: their problems (one per fold, solved together by
    :func:`poolkit.heads.logistic.fit`) are solved to ``inner_tol``, along the
    (ascending) grid. The first ``C``'s start from the solution on all of ``rows`` there
    (one problem, from zero: most of the path's Newton steps, a tenth of the work), each
    later ``C``'s where the line through the previous two solutions leads (in ``log C``):
    few Newton steps remain. All in the preconditioner's basis of the first fit (the
    curvature moves little along the grid: one eigendecomposition instead of six); only
    the chosen ``C`` is refitted, to full precision, from the folds' mean."""
    from sklearn.model_selection import StratifiedKFold

    x, y = x[rows], y[rows]
    classes, ids = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"the training part has one label only (label id {classes[0]})")
    splits = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, y))
    grid = np.asarray(grid, dtype=np.float64)
    weights = np.zeros((len(splits), len(y)))
    for f, (train, _) in enumerate(splits):
        weights[f, train] = 1.0
    order = np.argsort(grid, kind="stable")
    whole = logistic.fit(x, ids, np.ones((1, len(y))), grid[order[:1]], len(classes),
                         tol=inner_tol)
    accuracy, fits = np.zeros((len(splits), len(grid))), {}
    path = [(grid[order[0]], _each(whole, len(splits)))] * 2  # (C, Fit) of the last two C
    for j in order:
        fits[j] = logistic.fit(x, ids, weights, np.full(len(splits), grid[j]), len(classes),
                               tol=inner_tol, start=_onward(path, grid[j]),
                               basis=path[-1][1].basis)
        path = [path[-1], (grid[j], fits[j])]
        predicted = fits[j].fitted_logits.argmax(axis=2)  # (folds, N), ties: the first label
        accuracy[:, j] = [np.mean(predicted[f, test] == ids[test])
                          for f, (_, test) in enumerate(splits)]
    scores = [np.mean(accuracy[:, j]) for j in range(len(grid))]
    best = int(np.argmax(scores))
    mean = logistic.Fit(fits[best].coef.mean(axis=0, keepdims=True),
                        fits[best].intercept.mean(axis=0, keepdims=True), 0, np.zeros(1))
    refit = logistic.fit(x, ids, np.ones((1, len(y))), grid[best:best + 1], len(classes),
                         start=mean, basis=fits[best].basis)
    return SentEvalProbe(refit, 0, classes, grid[best], scores)


def _each(fit, count: int):
    """``count`` problems, each starting from the one solution of ``fit``."""
    return logistic.Fit(np.repeat(fit.coef, count, axis=0),
                        np.repeat(fit.intercept, count, axis=0), 0,
                        np.repeat(fit.gradient, count), fit.basis)


def _onward(path, c: float):
    """A start at ``c`` for the problems solved at the two ``C`` of ``path`` (``(C, Fit)``,
    ascending): the last solution moved on along the line through the two in ``log C``
    (the last solution itself where the two ``C`` are one)."""
    (c0, a), (c1, b) = path
    if c1 == c0:
        return b
    step = np.log(c / c1) / np.log(c1 / c0)
    return logistic.Fit(b.coef + step * (b.coef - a.coef),
                        b.intercept + step * (b.intercept - a.intercept), 0, b.gradient)


def undersample(y, rows, per_label: int, seed: int) -> np.ndarray:
    """Up to ``per_label`` items of each label from ``rows``, in a seeded random order
    (as MTEB draws its training items), sorted."""
    shuffled = np.random.default_rng(seed).permutation(rows)
    taken, counts = [], {}
    for i in shuffled:
        if counts.get(y[i], 0) < per_label:
            counts[y[i]] = counts.get(y[i], 0) + 1
            taken.append(i)
    return np.sort(np.asarray(taken, dtype=np.int64))


def _all_labels(probe, x, num_labels: int) -> np.ndarray:
    """``predict_proba`` with a column per label id, also for labels the probe never saw.

    On float32 features sklearn's rows sum to one only to float32 precision (off by up
    to 3e-8, which sklearn's log-loss flags in float64): they are renormalized in float64."""
    probs = np.zeros((len(x), num_labels))
    probs[:, probe.classes_] = probe.predict_proba(x)
    return probs / probs.sum(axis=1, keepdims=True)
