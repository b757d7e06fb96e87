"""Many L2-regularized logistic regressions on one feature matrix, solved at once.

SentEval's probe fits 66 logistic regressions per pooler and fold (6 values of
``C`` times 10 inner folds, and the refits), each on most of the same rows.
Here they are one batched problem: every problem sees all rows of ``x``, with
its own 0/1 (or any non-negative) sample weights and its own ``C``, and all are
solved together by a truncated Newton method (preconditioned conjugate
gradients on Hessian-vector products, then a backtracking line search), so each
step is two matrix products over the whole batch.

The objective of problem ``p`` is scikit-learn's ``LogisticRegression(C=c[p])``
with sample weights ``s[p]``::

    sum_i s[p, i] * logloss_i / sum_i s[p, i] + |W_p|^2 / (2 * c[p] * sum_i s[p, i])

with the intercept unpenalized; the binomial loss on one coefficient row for two
labels, the multinomial (softmax) loss on one row per label otherwise, as
scikit-learn's lbfgs. Its minimizer is reached to ``tol`` in the maximum
absolute gradient of that objective (scikit-learn's lbfgs stops at ``1e-4`` or
after 100 iterations, whichever comes first), in float64 (but for the gradient's sums at
loose tolerances, :data:`FLOAT32_GRADIENT`).
"""

from dataclasses import dataclass

import numpy as np

#: Default stopping point: the largest gradient entry of the scaled objective (about 100
#: times above float64's rounding of it on 5k items, so a line search still sees descent).
TOL = 1e-8
#: From this stopping point up, the gradient's sums over the rows run in float32: their
#: rounding (2e-8 to 6e-8 on the benchmark's features, 1.5k to 4.5k rows) stays far below
#: it. Below it they run in float64, as everything that decides a step's length does.
FLOAT32_GRADIENT = 1e-5


@dataclass
class Fit:
    #: (P, K', D) coefficients, K' = 1 for two labels (the row of label 1), else K
    coef: np.ndarray
    #: (P, K') intercepts
    intercept: np.ndarray
    #: Newton steps taken (the most over the problems)
    iterations: int
    #: (P,) largest absolute gradient entry at the end
    gradient: np.ndarray
    #: the preconditioner's eigenvectors it used, for a fit of about the same curvature
    basis: object = None
    #: (P, N, K) label scores of the rows it was fitted on, as :meth:`logits` gives them
    fitted_logits: np.ndarray = None

    def logits(self, x) -> np.ndarray:
        """(P, N, K) label scores of ``x`` (for two labels, column 0 is zero)."""
        p, k, d = self.coef.shape
        z = np.asarray(x, dtype=np.float64) @ self.coef.reshape(p * k, d).T  # (N, P K')
        z = z.reshape(len(z), p, k).transpose(1, 0, 2) + self.intercept[:, None, :]
        return _full(z, self.coef.shape[1])

    def predict_proba(self, x) -> np.ndarray:
        """(P, N, K) probabilities, as scikit-learn's ``predict_proba``."""
        z = self.logits(x)
        z = np.exp(z - z.max(axis=2, keepdims=True))
        return z / z.sum(axis=2, keepdims=True)


def _full(z, k):
    """Binomial scores (one column) as two softmax columns ``[0, z]``."""
    return z if k != 1 else np.concatenate([np.zeros_like(z), z], axis=-1)


def fit(x, y, weights, c, num_labels: int, tol: float = TOL, max_iter: int = 100,
        max_cg: int = 250, start: Fit | None = None, basis=None) -> Fit:
    """Fit ``P = len(c)`` problems on ``x`` (N, D) with labels ``y`` (N,) in
    ``range(num_labels)``: problem ``p`` weighs row ``i`` by ``weights[p, i]`` and
    has inverse regularization ``c[p]``. Each problem must see every label (a
    ``ValueError`` otherwise, as scikit-learn would fit a smaller model). ``start``: a
    :class:`Fit` of the same shape to start from (default: zero), e.g. the solutions at a
    neighbouring ``C``; ``basis``: a :class:`Fit`'s ``basis``, for problems of about its
    curvature, on any rows of the same features (default: worked out at the first step;
    either way only the preconditioner, never the solution, depends on it). A problem is
    solved only while its gradient is above ``tol``, so every step's products run over the
    problems still going."""
    import torch

    problems = _Problems(x, y, weights, c, num_labels, tol >= FLOAT32_GRADIENT)
    p, k, d = problems.p, problems.k, problems.d
    w = torch.zeros(p, k, d + 1, dtype=torch.float64) if start is None else torch.cat(
        [torch.as_tensor(start.coef), torch.as_tensor(start.intercept)[..., None]], dim=2)
    if basis is not None:  # its eigenvectors, for these rows
        basis = _Basis(basis.vectors, problems.x1_32)
    z = problems.scores(w)  # (N, P, K'), kept up to date along the steps
    value = problems.objective(w, z)  # (P,), likewise
    largest = torch.zeros(p, dtype=torch.float64)
    going = None  # the problems not yet solved (nor stalled): an index, None for all
    steps = 0
    for steps in range(max_iter + 1):
        sub = problems if going is None else problems.subset(going)
        now, scores = _part(w, going), _part(z, going, 1)
        prob = sub.probabilities(scores)  # (N, P', K')
        grad = sub.gradient(now, prob)
        _put(largest, going, grad.abs().amax(dim=(1, 2)))
        active = _part(largest, going) > tol
        if steps == max_iter or not bool(active.any()):
            break
        if not bool(active.all()):
            kept = active.nonzero()[:, 0]
            going = _narrow(going, kept)
            sub, now, scores = sub.subset(kept), now[kept], scores[:, kept]
            prob, grad = prob[:, kept], grad[kept]
        if basis is None:
            basis = _Basis.at(sub, prob)
        # the gradient a step leaves is its conjugate gradients' residual to first order:
        # 10% below the tolerance holds the second-order rest (measured: 0.5% more steps)
        step = basis.newton_step(sub, prob, grad, max_cg, 0.9 * tol)
        along = sub.scores(step)  # the scores move linearly along the step: one product
        length, reached = _backtrack(
            lambda t: sub.objective(now + t[:, None, None] * step,
                                    torch.addcmul(scores, t[None, :, None], along)),
            _dot(grad, step), _part(value, going))
        _put(w, going, now + length[:, None, None] * step)
        # in place: ``scores`` is ``z`` itself, or a copy of its problems still going
        _put(z, going, scores.addcmul_(length[None, :, None], along), dim=1)
        _put(value, going, reached)
        if not bool((length > 0).all()):  # no descent left within rounding: stalled, stays
            going = _narrow(going, (length > 0).nonzero()[:, 0])
    coef, intercept = w[..., :d].numpy(), w[..., d].numpy()
    return Fit(coef, intercept, steps, largest.numpy(), basis,
               _full(z.permute(1, 0, 2).numpy(), k))


def _part(t, index, dim: int = 0):
    """``t``'s problems ``index`` along ``dim`` (all of ``t`` itself for ``None``)."""
    return t if index is None else t.index_select(dim, index)


def _narrow(index, kept):
    """The problems ``index`` (``None`` for all) narrowed to its positions ``kept``."""
    return kept if index is None else index[kept]


def _put(t, index, value, dim: int = 0):
    """Write ``value`` into ``t``'s problems ``index`` along ``dim`` (all for ``None``)."""
    if index is None:
        t.copy_(value)
    else:
        t.index_copy_(dim, index, value)


class _Problems:
    """``P`` weighted L2 logistic regressions on one design matrix, in float64: their
    scores, objective and gradient, all problems at once (the gradient's sums over the
    rows in float32 with ``float32_gradient``). Weights ``w`` are
    ``(P, K', D+1)``: ``K' = 1`` for two labels (scikit-learn's binary model), else
    ``K``; the last column is the unpenalized intercept."""

    def __init__(self, x, y, weights, c, num_labels: int, float32_gradient: bool = False):
        import torch

        x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
        y = torch.as_tensor(np.asarray(y), dtype=torch.int64)
        s = torch.as_tensor(np.asarray(weights), dtype=torch.float64)
        c = torch.as_tensor(np.asarray(c), dtype=torch.float64)
        self.n, self.d = x.shape
        self.p = len(c)
        if s.shape != (self.p, self.n):
            raise ValueError(f"weights: shape {tuple(s.shape)}, expected {(self.p, self.n)}")
        onehot = torch.nn.functional.one_hot(y, num_labels).to(torch.float64)  # (N, K)
        seen = (s @ onehot) > 0  # (P, K)
        if not bool(seen.all()):
            problem, label = (~seen).nonzero()[0].tolist()
            raise ValueError(f"problem {problem} has no item of label {label} to learn from")
        self.k = 1 if num_labels == 2 else num_labels
        self.x1 = torch.cat([x, torch.ones(self.n, 1, dtype=x.dtype)], dim=1)  # (N, D+1)
        self.x1_32 = self.x1.to(torch.float32)  # for the preconditioner's basis
        self.summed = self.x1_32 if float32_gradient else self.x1
        # (N, P): each row's weight in each problem's mean (row-major: views, not copies)
        self.scale = (s.T / s.sum(dim=1)).contiguous()
        self.reg = 1.0 / (c * s.sum(dim=1))  # (P,)
        self.penalized = torch.ones(self.d + 1, dtype=x.dtype)
        self.penalized[-1] = 0.0  # the intercept
        self.target = onehot[:, None, -self.k:]  # (N, 1, K')
        self.label = y[:, None, None]  # (N, 1, 1)

    def subset(self, index) -> "_Problems":
        """The same design matrix and labels with only the problems ``index`` (a view:
        nothing is copied but their weights and penalties)."""
        import copy

        part = copy.copy(self)
        part.scale, part.reg, part.p = self.scale[:, index], self.reg[index], len(index)
        return part

    def scores(self, w):
        """(P, K', D+1) -> (N, P, K') scores (for two labels, of label 1 only)."""
        n, p, k, d = self.n, self.p, self.k, self.d
        return (self.x1 @ w.reshape(p * k, d + 1).T).view(n, p, k)

    def probabilities(self, z):
        """(N, P, K') scores -> (N, P, K') softmax probabilities of the same labels."""
        import torch

        if self.k == 1:
            return torch.sigmoid(z)
        # one (N, P, K) array made, none for temporaries: twice torch.softmax's speed here
        e = (z - z.amax(dim=2, keepdim=True)).exp_()
        return e.div_(e.sum(dim=2, keepdim=True))

    def objective(self, w, z):
        """The objectives (P,) at weights ``w`` with scores ``z`` (``self.scores(w)``)."""
        import torch

        if self.k > 1:  # log-sum-exp less the label's score, with one (N, P, K) temporary
            top = z.amax(dim=2, keepdim=True)
            loss = (z - top).exp_().sum(dim=2).log_() + top[..., 0] - \
                z.gather(2, self.label.expand(-1, z.shape[1], -1))[..., 0]
        else:
            loss = torch.nn.functional.softplus(z[..., 0]) - z[..., 0] * self.target[..., 0]
        return (self.scale * loss).sum(dim=0) + \
            0.5 * self.reg * ((w * w) * self.penalized).sum(dim=(1, 2))

    def gradient(self, w, prob):
        n, p, k, d = self.n, self.p, self.k, self.d
        loss = (prob * self.scale[..., None]).addcmul_(self.scale[..., None], self.target,
                                                        value=-1.0)
        loss = loss.reshape(n, p * k).to(self.summed.dtype).T @ self.summed
        return loss.view(p, k, d + 1).to(w.dtype) + self.reg[:, None, None] * w * self.penalized


def _dot(a, b):
    return (a * b).sum(dim=(1, 2))


class _Basis:
    """Newton steps by preconditioned conjugate gradients on Hessian-vector products, in
    one orthonormal basis of the features: the eigenvectors of ``X^T diag(h) X`` on the
    rows' curvature ``h`` averaged over the problems and labels. In that basis the raw
    features' correlations, which make plain conjugate gradients slow, are gone, and what
    is left of each label's block of each problem's Hessian (``X^T diag(h_pk) X`` plus its
    penalty) sits mostly on its diagonal: the preconditioner, a division.

    The basis is worked out once, at the first step's curvature, and kept, with the rows
    turned into it; every step takes the diagonal at its own curvature (one matrix product
    over the rows) and runs its conjugate gradients wholly in the basis, in float32 (twice
    float64's speed here: they only steer the step, which the float64 gradient and line
    search then check), so a conjugate gradient step is the Hessian product's two matrix
    products and nothing more, however many labels there are.

    With more than two labels the steps keep the sum over the labels of every
    coefficient where it starts (0, where scikit-learn's optimum has it): adding one
    vector to every label's row leaves the loss as it is, so the Hessian's only
    curvature along it is the penalty's (none for the intercept), which a per-label
    diagonal takes for the labels' far larger one; left in, that direction is most of
    the conjugate gradients' work at large ``C``."""

    def __init__(self, vectors, x1):
        """The basis of the columns of ``vectors`` (D+1, D+1), for the float32 rows ``x1``."""
        self.vectors = vectors
        self.x1 = x1 @ vectors  # (N, D+1): the rows in that basis
        self.squares = self.x1**2
        self.intercept = vectors[-1]  # the unpenalized direction, in that basis

    @classmethod
    def at(cls, problems: _Problems, prob) -> "_Basis":
        """The basis of ``problems`` at probabilities ``prob`` (N, P, K')."""
        import torch

        x1 = problems.x1_32
        mean = (problems.scale[..., None] * prob * (1 - prob)).mean(dim=(1, 2))
        _, vectors = torch.linalg.eigh((x1 * mean.to(torch.float32)[:, None]).T @ x1)
        return cls(vectors, x1)

    def newton_step(self, problems: _Problems, prob, grad, max_cg: int, floor: float = 0.0):
        """The (truncated) Newton steps (P, K', D+1) of ``problems`` at probabilities
        ``prob`` (N, P, K') and gradients ``grad``; their conjugate gradients stop once
        the residual's largest entry is below ``floor`` at the latest."""
        import torch

        n, p, k = prob.shape
        prob = prob.to(torch.float32)
        # each label's own curvature, per row and problem, weighted as in the mean
        weight = prob * problems.scale.to(torch.float32)[..., None]
        curvature = torch.addcmul(weight, weight, prob, value=-1.0)
        reg = problems.reg.to(torch.float32)[:, None, None]
        diagonal = (curvature.reshape(n, p * k).T @ self.squares).view(p, k, -1) + reg
        if k == 1:
            weight = curvature
        u = torch.empty(n, p * k)  # the products' rows, made once (a fresh one costs more)

        def hessian_times(v):
            torch.mm(self.x1, v.reshape(p * k, -1).T, out=u)
            hu = u.view(n, p, k)
            if k > 1:  # the softmax's coupling of the labels
                hu.sub_(torch.einsum("npk,npk->np", prob, hu)[..., None])
            hu.mul_(weight)
            back = (u.T @ self.x1).view(p, k, -1).addcmul_(reg, v)
            return back.addcmul_(reg * (v @ self.intercept)[..., None], self.intercept,
                                 value=-1.0)

        def precondition(r):
            out = r / diagonal
            # every label's row moved alike: the loss's flat direction
            return out.sub_(out.mean(dim=1, keepdim=True)) if k > 1 else out

        def largest(r):  # the largest entry of each problem's residual, in the features
            return (r @ self.vectors.T).abs().amax(dim=(1, 2))

        step = _conjugate_gradients(hessian_times, -(grad.to(torch.float32) @ self.vectors),
                                    precondition, max_cg, floor, largest)
        step = (step @ self.vectors.T).to(torch.float64)
        return step - step.mean(dim=1, keepdim=True) if k > 1 else step  # float32's drift


def _conjugate_gradients(hess, rhs, precondition, max_cg: int, floor: float = 0.0,
                         largest=None):
    """Approximate Newton steps: ``hess(step) = rhs`` per problem, by
    preconditioned conjugate gradients, each problem stopped once its residual
    is below ``min(0.5, sqrt(|rhs|)) * |rhs|`` (the usual forcing sequence of
    truncated Newton methods) or its largest entry below ``floor``: the residual is
    the gradient the step leaves (to first order), so one below the fit's tolerance is
    as good as any smaller one. ``largest(residual)`` (P,): that entry where the fit
    measures it, if the residual is in another basis (default: each row's norm, which
    no rotation of the row exceeds); asked for only once a row's norm is small enough
    (``floor`` times the root of its length) for the entry to be below ``floor``."""
    import torch

    norm = rhs.flatten(1).norm(dim=1)
    # float32 products resolve a residual to about 1e-5 of the right-hand side
    bound = torch.clamp(norm.sqrt(), min=1e-5, max=0.5) * norm
    near = floor * rhs.shape[2] ** 0.5
    step = torch.zeros_like(rhs)
    residual = rhs.clone()
    z = precondition(residual)
    direction = z.clone()
    rz = _dot(residual, z)
    going = torch.ones(len(rhs), dtype=torch.bool)
    for _ in range(max_cg):
        rows = residual.norm(dim=2)  # (P, K')
        size = rows.amax(dim=1)
        if largest is not None and bool((going & (size <= near)).any()):
            size = largest(residual)
        going = going & (rows.norm(dim=1) > bound) & (size > floor)
        if not bool(going.any()):
            break
        hd = hess(direction)
        alpha = torch.where(going, rz / _dot(direction, hd), torch.zeros_like(rz))
        step.addcmul_(alpha[:, None, None], direction)
        residual.addcmul_(alpha[:, None, None], hd, value=-1.0)
        z = precondition(residual)
        rz_next = _dot(residual, z)
        beta = torch.where(going, rz_next / rz, torch.zeros_like(rz))
        direction.mul_(beta[:, None, None]).add_(z)
        rz = torch.where(going, rz_next, rz)
    return step


def _backtrack(objective, slope, now, shrink: float = 0.5, tries: int = 40):
    """Step lengths (P,) meeting Armijo's condition, halved from 1 per problem (0 for
    those that found none), and the objectives there: ``objective(lengths)`` (P,) is the
    objectives at those lengths along the steps, ``slope`` (P,) the gradients' along
    them, ``now`` (P,) the objectives at length 0."""
    import torch

    length = torch.ones_like(slope)
    for _ in range(tries):
        reached = objective(length)
        done = reached <= now + 1e-4 * length * slope
        if bool(done.all()):
            return length, reached
        length = torch.where(done, length, length * shrink)
    return torch.where(done, length, torch.zeros_like(length)), torch.where(done, reached, now)
