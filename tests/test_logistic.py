"""The batched logistic regression against scikit-learn's, and SentEval's probe built on it.

scikit-learn runs to its optimum here (lbfgs, ``tol=1e-10``, ``max_iter=10_000``);
on these small, well-conditioned problems the two optima agree to 1e-5 in every
coefficient and intercept, and in objective to 1e-10.
"""

import warnings

import numpy as np
import pytest

from poolkit.heads import logistic

ATOL = 1e-5


def _problem(labels: int, n: int = 160, d: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, labels, n)
    centers = rng.normal(size=(labels, d))
    x = centers[y] + rng.normal(scale=1.5, size=(n, d)) + 1.0  # off-centre: the intercept works
    return x.astype(np.float32), y


def _sklearn(x, y, c, sample_weight=None):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, tol=1e-10, max_iter=10_000).fit(
        x.astype(np.float64), y, sample_weight=sample_weight)  # float32 would stop it short


def _objective(x, y, coef, intercept, c, weight):
    """scikit-learn's LogisticRegression objective, written out."""
    z = x.astype(np.float64) @ coef.T + intercept
    if coef.shape[0] == 1:
        z = np.concatenate([np.zeros_like(z), z], axis=1)
    top = z.max(axis=1, keepdims=True)
    loss = np.log(np.exp(z - top).sum(axis=1)) + top[:, 0] - z[np.arange(len(y)), y]
    return weight @ loss / weight.sum() + (coef**2).sum() / (2 * c * weight.sum())


@pytest.mark.parametrize("labels", [2, 3, 5])
def test_every_problem_reaches_sklearns_optimum(labels):
    x, y = _problem(labels)
    rng = np.random.default_rng(1)
    c = np.array([0.25, 1.0, 8.0, 2.0, 0.5])
    weights = np.ones((len(c), len(y)))
    weights[1, rng.choice(len(y), 40, replace=False)] = 0.0  # an inner fold: rows left out
    weights[2, :80] = 0.0
    weights[3] = rng.uniform(0.2, 3.0, len(y))  # any non-negative weights
    fitted = logistic.fit(x, y, weights, c, labels)
    assert fitted.coef.shape == (len(c), 1 if labels == 2 else labels, x.shape[1])
    assert (fitted.gradient <= logistic.TOL).all()
    # the scores kept up to date along the steps are the final coefficients' scores
    np.testing.assert_allclose(fitted.fitted_logits, fitted.logits(x), atol=1e-9, rtol=0)
    for p in range(len(c)):
        expected = _sklearn(x, y, c[p], sample_weight=weights[p])
        np.testing.assert_allclose(fitted.coef[p], expected.coef_, atol=ATOL, rtol=0)
        np.testing.assert_allclose(fitted.intercept[p], expected.intercept_, atol=ATOL, rtol=0)
        ours = _objective(x, y, fitted.coef[p], fitted.intercept[p], c[p], weights[p])
        theirs = _objective(x, y, expected.coef_, expected.intercept_, c[p], weights[p])
        assert ours <= theirs + 1e-10
        np.testing.assert_allclose(fitted.predict_proba(x)[p], expected.predict_proba(x),
                                   atol=ATOL, rtol=0)


@pytest.mark.parametrize("labels, scales, max_cg, tol", [(2, 2, 10, logistic.TOL),
                                                         (5, 1, 40, 1e-4)])
def test_the_preconditioner_undoes_badly_scaled_correlated_features(labels, scales, max_cg,
                                                                    tol):
    """Features mixed and scaled over 10**-scales .. 10**scales, where plain conjugate
    gradients crawl: with the preconditioner the binary problems reach ``TOL`` in 10 Newton
    steps and the 5-label ones 1.8e-5 in 30; with none (the identity) the same work leaves
    gradients of 1.6e-2 and 2.4e-3."""
    x, y = _problem(labels, n=400, d=12)
    rng = np.random.default_rng(2)
    mixed = x @ (rng.normal(size=(12, 12)) * np.logspace(-scales, scales, 12))
    fitted = logistic.fit(mixed.astype(np.float32), y, np.ones((2, len(y))),
                          np.array([0.25, 8.0]), labels, max_iter=30, max_cg=max_cg)
    assert (fitted.gradient <= tol).all(), fitted.gradient


def test_the_steps_leave_out_the_labels_shared_direction():
    """Many labels and a weak penalty: moving every label's row alike changes only the
    penalty, so the Newton steps stay where the labels' rows sum to zero and reach ``TOL``
    in 14 steps of at most 20 conjugate gradients; with that direction left to the
    per-label preconditioner, 20 such steps leave gradients of 3.4e-7 (C=8) and 7.5e-6
    (C=64)."""
    x, y = _problem(8, n=600, d=20, seed=5)
    fitted = logistic.fit(x, y, np.ones((2, len(y))), np.array([8.0, 64.0]), 8,
                          max_iter=20, max_cg=20)
    assert (fitted.gradient <= logistic.TOL).all(), fitted.gradient
    np.testing.assert_allclose(fitted.coef.sum(axis=1), 0.0, atol=1e-9)


@pytest.mark.parametrize("labels", [2, 5])
def test_a_loose_fit_sums_its_gradient_in_float32_and_still_reaches_its_tolerance(labels):
    """At the inner folds' tolerance the gradient's sums run in float32; the float64
    gradient at the fit's solution is below the tolerance all the same."""
    import torch

    x, y = _problem(labels, n=400, d=24)
    c, weights = np.array([0.25, 4.0]), np.ones((2, len(y)))
    weights[1, :100] = 0.0
    tol = logistic.FLOAT32_GRADIENT
    fitted = logistic.fit(x, y, weights, c, labels, tol=tol)
    exact = logistic._Problems(x, y, weights, c, labels)
    loose = logistic._Problems(x, y, weights, c, labels, float32_gradient=True)
    assert loose.summed.dtype == torch.float32 and exact.summed.dtype == torch.float64
    w = torch.cat([torch.as_tensor(fitted.coef), torch.as_tensor(fitted.intercept)[..., None]],
                  dim=2)
    prob = exact.probabilities(exact.scores(w))
    gradient = exact.gradient(w, prob)
    assert float(gradient.abs().max()) <= tol
    assert float((loose.gradient(w, prob) - gradient).abs().max()) < tol / 100


def test_conjugate_gradients_stop_once_the_residual_is_below_the_floor():
    """The residual is the gradient a step leaves: once it is below the floor (0.9 of the
    fit's tolerance), more conjugate gradients buy nothing. A small right-hand side,
    where the forcing sequence alone asks for 1.9e-8: 57 products; a floor of 1e-6 stops
    at 26, with the residual below it."""
    import torch

    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(40, 40)))
    h = torch.tensor((q * np.logspace(0, 3, 40)) @ q.T, dtype=torch.float32)
    rhs = torch.tensor(rng.normal(size=(1, 1, 40)) * 1e-6, dtype=torch.float32)
    products = {}
    for floor in (0.0, 1e-6):
        products[floor] = 0

        def hess(v, floor=floor):
            products[floor] += 1
            return v @ h

        step = logistic._conjugate_gradients(hess, rhs, lambda r: r, 200, floor)
        assert float((rhs - step @ h).norm()) <= max(floor, 2e-8)
    assert products[1e-6] < products[0.0] / 1.5, products


def test_the_floor_holds_each_labels_row_not_the_whole_residual():
    """The fit stops on its largest gradient entry, which no rotation of a label's row
    takes above the row's norm: the floor is met once every row's norm is below it. The
    same row for 16 labels (a residual 4 times its row's norm) takes the products that
    one label's takes, give or take one for float32's sums (35 against 26 with the floor
    on the whole residual)."""
    import torch

    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(40, 40)))
    h = torch.tensor((q * np.logspace(0, 3, 40)) @ q.T, dtype=torch.float32)
    row = torch.tensor(rng.normal(size=(1, 1, 40)) * 1e-6, dtype=torch.float32)
    products = {}
    for labels in (1, 16):
        rhs = row.expand(1, labels, 40).clone()
        products[labels] = 0

        def hess(v, labels=labels):
            products[labels] += 1
            return v @ h

        step = logistic._conjugate_gradients(hess, rhs, lambda r: r.clone(), 200, 1e-6)
        assert float((rhs - step @ h).norm(dim=2).max()) <= 1e-6
    assert products[16] <= products[1] + 1, products


def test_the_floor_is_on_the_largest_entry_where_the_fit_measures_it():
    """Conjugate gradients run in a rotated basis and the fit stops on the largest
    gradient entry in its own: told how to measure that, they stop once it is below the
    floor, which a row's norm (up to the root of its length above it) reaches later."""
    import torch

    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(40, 40)))
    h = torch.tensor((q * np.logspace(0, 3, 40)) @ q.T, dtype=torch.float32)
    turn = torch.tensor(np.linalg.qr(rng.normal(size=(40, 40)))[0], dtype=torch.float32)
    rhs = torch.tensor(rng.normal(size=(2, 3, 40)) * 1e-5, dtype=torch.float32)

    def largest(r):
        return (r @ turn.T).abs().amax(dim=(1, 2))

    products = {}
    for measured in (None, largest):
        products[measured] = 0

        def hess(v, measured=measured):
            products[measured] += 1
            return v @ h

        step = logistic._conjugate_gradients(hess, rhs, lambda r: r.clone(), 200, 1e-6,
                                             measured)
        assert float(largest(rhs - step @ h).max()) <= 1e-6
    assert products[largest] < products[None], products


def test_the_path_onward_starts_nearer_the_next_solution():
    """SentEval's inner folds walk the grid of C upward: each C starts from the line
    through the previous two solutions in log C. On this problem that start lies at 0.46
    (C=4) and 0.35 (C=3) of the distance from the last solution to the next one; taking
    C=3 one whole grid step on (as for C=4) would land further off than the last
    solution itself (0.32 against its 0.25). Equal C: the last solution."""
    from poolkit.heads.probes import _onward

    x, y = _problem(5, n=400, d=12, seed=0)
    every = np.ones((1, len(y)))
    one, two = (logistic.fit(x, y, every, np.array([c]), 5) for c in (1.0, 2.0))
    for c in (4.0, 3.0):
        target = logistic.fit(x, y, every, np.array([c]), 5, start=two)
        onward = _onward([(1.0, one), (2.0, two)], c)

        def distance(fit):
            return np.sqrt(((fit.coef - target.coef) ** 2).sum()
                           + ((fit.intercept - target.intercept) ** 2).sum())

        assert distance(onward) < 0.6 * distance(two), c
    assert _onward([(2.0, one), (2.0, two)], 4.0) is two


def test_a_basis_from_other_rows_only_preconditions():
    """A fit's ``basis`` handed to a fit on other rows of the same features (the API
    allows it): the same optimum as scikit-learn's, reached to ``TOL``."""
    x, y = _problem(3, n=300, seed=6)
    other = logistic.fit(x[:120], y[:120], np.ones((1, 120)), np.array([1.0]), 3)
    fitted = logistic.fit(x[120:], y[120:], np.ones((1, 180)), np.array([1.0]), 3,
                          basis=other.basis)
    assert (fitted.gradient <= logistic.TOL).all(), fitted.gradient
    expected = _sklearn(x[120:], y[120:], 1.0)
    np.testing.assert_allclose(fitted.coef[0], expected.coef_, atol=ATOL, rtol=0)


def test_a_problem_without_some_label_is_refused():
    x, y = _problem(3)
    weights = np.ones((2, len(y)))
    weights[1, y == 2] = 0.0
    with pytest.raises(ValueError, match="problem 1 has no item of label 2"):
        logistic.fit(x, y, weights, np.ones(2), 3)


def test_senteval_probe_is_sklearns_inner_cross_validation():
    """SentEval's recipe rebuilt with scikit-learn, fit by fit: the same C chosen from
    the same inner scores, the same refitted probe."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    from poolkit.heads.probes import SENTEVAL_C, senteval_probe

    x, y = _problem(3, n=300, d=8, seed=4)
    y = y + 1  # label 0 has no item: the probe fits the labels it sees, as scikit-learn
    rows = np.arange(20, 300)
    probe = senteval_probe(x, y, rows, SENTEVAL_C, 5, seed=3)
    splits = list(StratifiedKFold(n_splits=5, shuffle=True, random_state=3).split(x[rows], y[rows]))
    xs, ys = x[rows].astype(np.float64), y[rows]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = [np.mean([LogisticRegression(C=c, tol=1e-10, max_iter=10_000)
                           .fit(xs[a], ys[a]).score(xs[b], ys[b]) for a, b in splits])
                  for c in SENTEVAL_C]
    assert probe.scores == pytest.approx(scores, abs=1e-12)
    assert probe.C == SENTEVAL_C[int(np.argmax(scores))]
    assert list(probe.classes_) == [1, 2, 3]
    expected = _sklearn(xs, ys, probe.C)
    np.testing.assert_allclose(probe.predict_proba(x[:20]), expected.predict_proba(x[:20]),
                               atol=ATOL, rtol=0)


def test_senteval_probe_needs_two_labels():
    from poolkit.heads.probes import senteval_probe

    x, y = _problem(2)
    with pytest.raises(ValueError, match="one label only"):
        senteval_probe(x, np.zeros_like(y), np.arange(len(y)), (1.0,), 3, seed=0)
