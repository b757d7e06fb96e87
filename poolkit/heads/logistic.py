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
after 100 iterations, whichever comes first), in float64.
"""

from dataclasses import dataclass

import numpy as np

#: Default stopping point: the largest gradient entry of the scaled objective (about 100
#: times above float64's rounding of it on 5k items, so a line search still sees descent).
TOL = 1e-8


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
    #: the preconditioner's eigenvectors it worked out, for a fit of the same curvature
    basis: object = None

    def logits(self, x) -> np.ndarray:
        """(P, N, K) label scores of ``x`` (for two labels, column 0 is zero)."""
        p, k, d = self.coef.shape
        z = np.asarray(x, dtype=np.float64) @ self.coef.reshape(p * k, d).T  # (N, P K')
        z = z.reshape(len(z), p, k).transpose(1, 0, 2) + self.intercept[:, None, :]
        return _full(z, self.coef.shape[1], np)

    def predict_proba(self, x) -> np.ndarray:
        """(P, N, K) probabilities, as scikit-learn's ``predict_proba``."""
        z = self.logits(x)
        z = np.exp(z - z.max(axis=2, keepdims=True))
        return z / z.sum(axis=2, keepdims=True)


def _full(z, k, xp):
    """Binomial scores (one column) as two softmax columns ``[0, z]``."""
    if k != 1:
        return z
    return xp.concatenate([xp.zeros_like(z), z], axis=-1) if xp is np \
        else xp.cat([xp.zeros_like(z), z], dim=-1)


def fit(x, y, weights, c, num_labels: int, tol: float = TOL, max_iter: int = 100,
        max_cg: int = 250, start: Fit | None = None, basis=None) -> Fit:
    """Fit ``P = len(c)`` problems on ``x`` (N, D) with labels ``y`` (N,) in
    ``range(num_labels)``: problem ``p`` weighs row ``i`` by ``weights[p, i]`` and
    has inverse regularization ``c[p]``. Each problem must see every label (a
    ``ValueError`` otherwise, as scikit-learn would fit a smaller model). ``start``: a
    :class:`Fit` of the same shape to start from (default: zero), e.g. the solutions at a
    neighbouring ``C``; ``basis``: a :class:`Fit`'s ``basis``, for problems of about its
    curvature (default: worked out at the first step). A problem is solved only while its
    gradient is above ``tol``, so every step's products run over the problems still
    going."""
    import torch

    problems = _Problems(x, y, weights, c, num_labels)
    p, k, d = problems.p, problems.k, problems.d
    w = torch.zeros(p, k, d + 1, dtype=torch.float64) if start is None else torch.cat(
        [torch.as_tensor(start.coef), torch.as_tensor(start.intercept)[..., None]], dim=2)
    largest = torch.zeros(p, dtype=torch.float64)
    going = torch.arange(p)  # the problems not yet solved (nor stalled)
    steps = 0
    for steps in range(max_iter + 1):
        sub, now = problems.subset(going), w[going]
        prob = torch.softmax(sub.scores(now), dim=2)[..., -k:]  # (N, P', K')
        grad = sub.gradient(now, prob)
        largest[going] = grad.abs().amax(dim=(1, 2))
        active = largest[going] > tol
        if steps == max_iter or not bool(active.any()):
            break
        going, sub, now = going[active], sub.subset(active.nonzero()[:, 0]), now[active]
        prob, grad = prob[:, active], grad[active]
        curvature = sub.scale[..., None] * prob * (1 - prob)  # (N, P', K')
        if basis is None:
            basis = _Preconditioner(sub.x1_32, curvature)
        prob32 = prob.to(torch.float32)  # what the Hessian products read, once per step
        step = _conjugate_gradients(lambda v: sub.hessian_times(v, prob32), -grad,
                                    basis.at(curvature, sub.reg), max_cg)
        length = _backtrack(sub.objective, now, step, grad)
        w[going] = now + length[:, None, None] * step
        going = going[length > 0]  # no descent left within rounding: stalled, stays
    coef, intercept = w[..., :d].numpy(), w[..., d].numpy()
    return Fit(coef, intercept, steps, largest.numpy(), basis)


class _Problems:
    """``P`` weighted L2 logistic regressions on one design matrix, in float64: their
    scores, objective, gradient and Hessian-vector products, all problems at once.
    Weights ``w`` are ``(P, K', D+1)``: ``K' = 1`` for two labels (scikit-learn's binary
    model), else ``K``; the last column is the unpenalized intercept."""

    def __init__(self, x, y, weights, c, num_labels: int):
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
        self.x1_32 = self.x1.to(torch.float32)
        self.scale = s.T / s.sum(dim=1)  # (N, P): each row's weight in each problem's mean
        self.scale_32 = self.scale.to(torch.float32)
        self.reg = 1.0 / (c * s.sum(dim=1))  # (P,)
        self.penalized = torch.ones(self.d + 1, dtype=x.dtype)
        self.penalized[-1] = 0.0  # the intercept
        self.target = onehot[:, None, -self.k:]  # (N, 1, K')

    def subset(self, index) -> "_Problems":
        """The same design matrix and labels with only the problems ``index`` (a view:
        nothing is copied but their weights and penalties)."""
        import copy

        part = copy.copy(self)
        part.scale, part.reg, part.p = self.scale[:, index], self.reg[index], len(index)
        part.scale_32 = self.scale_32[:, index]
        return part

    def scores(self, w):
        """(P, K', D+1) -> (N, P, K) softmax scores."""
        import torch

        n, p, k, d = self.n, self.p, self.k, self.d
        z = (self.x1 @ w.reshape(p * k, d + 1).T).view(n, p, k)
        return _full(z, k, torch)

    def back(self, g, x1=None):
        """(N, P, K') per-row gradients -> (P, K', D+1), through ``x1`` (default: the
        design matrix in float64)."""
        n, p, k, d = self.n, self.p, self.k, self.d
        return (g.reshape(n, p * k).T @ (self.x1 if x1 is None else x1)).view(p, k, d + 1)

    def objective(self, w):
        import torch

        z, k, target = self.scores(w), self.k, self.target
        loss = torch.logsumexp(z, dim=2) - (z[..., -k:] * target).sum(dim=2) if k > 1 \
            else torch.nn.functional.softplus(z[..., 1]) - z[..., 1] * target[..., 0]
        return (self.scale * loss).sum(dim=0) + \
            0.5 * self.reg * ((w * w) * self.penalized).sum(dim=(1, 2))

    def gradient(self, w, prob):
        return self.back(self.scale[..., None] * (prob - self.target)) + \
            self.reg[:, None, None] * w * self.penalized

    def hessian_times(self, v, prob):
        """Hessian-vector products, one per problem, at the float32 scores ``prob``: in
        float32 (twice float64's speed here), since they only steer the Newton step that
        the float64 gradient and line search then check."""
        import torch

        n, p, k, d = self.n, self.p, self.k, self.d
        u = (self.x1_32 @ v.to(torch.float32).reshape(p * k, d + 1).T).view(n, p, k)
        hu = prob * (u - (prob * u).sum(dim=2, keepdim=True)) if k > 1 \
            else prob * (1 - prob) * u
        back = self.back(self.scale_32[..., None] * hu, self.x1_32).to(torch.float64)
        return back + self.reg[:, None, None] * v * self.penalized


def _dot(a, b):
    return (a * b).sum(dim=(1, 2))


class _Preconditioner:
    """``r -> M_p^-1 r`` for every problem ``p``: ``M_p`` is the diagonal of each
    label's block of the problem's Hessian (``X^T diag(h_pk) X`` plus its penalty) in
    one orthonormal basis of the features, the eigenvectors of ``X^T diag(h) X`` on the
    rows' curvature ``h`` averaged over the problems and labels. In that basis the raw
    features' correlations, which make plain conjugate gradients slow, are gone, and
    what is left of each label's curvature sits mostly on the diagonal.

    The basis is worked out once, at the first step's curvature (in float32: a
    preconditioner needs no more), and kept; every step then takes the diagonal at its
    own curvature, for each problem and label: one matrix product over the rows, and two
    over the features for each use, however many labels there are (one eigenvector basis
    per label costs a decomposition each, and was most of the time on many labels).
    Conjugate gradients stay exact whatever the preconditioner.

    With more than two labels the steps keep the sum over the labels of every
    coefficient where it starts (0, where scikit-learn's optimum has it): adding one
    vector to every label's row leaves the loss as it is, so the Hessian's only
    curvature along it is the penalty's (none for the intercept), which a per-label
    diagonal takes for the labels' far larger one; left in, that direction is most of
    the conjugate gradients' work at large ``C``."""

    def __init__(self, x1, curvature):
        """``x1``: the design matrix in float32."""
        import torch

        mean = curvature.mean(dim=(1, 2)).to(torch.float32)  # (N,)
        _, self.vectors = torch.linalg.eigh((x1 * mean[:, None]).T @ x1)  # one a column
        self.squares = (x1 @ self.vectors) ** 2  # (N, D+1): the rows in that basis, squared

    def at(self, curvature, reg):
        """The preconditioner of the problems at ``curvature`` (N, P, K') and penalties
        ``reg`` (P,)."""
        import torch

        n, p, k = curvature.shape
        diagonal = (curvature.to(torch.float32).reshape(n, p * k).T @ self.squares).view(
            p, k, -1) + reg.to(torch.float32)[:, None, None]
        vectors = self.vectors

        def apply(r):  # (P, K', D+1), rotated in float32
            out = ((r.to(torch.float32) @ vectors) / diagonal @ vectors.T).to(torch.float64)
            if out.shape[1] > 1:  # every label's row moved alike: the loss's flat direction
                out -= out.mean(dim=1, keepdim=True)
            return out

        return apply


def _conjugate_gradients(hess, rhs, precondition, max_cg: int):
    """Approximate Newton steps: ``hess(step) = rhs`` per problem, by
    preconditioned conjugate gradients, each problem stopped once its residual
    is below ``min(0.5, sqrt(|rhs|)) * |rhs|`` (the usual forcing sequence of
    truncated Newton methods)."""
    import torch

    norm = rhs.flatten(1).norm(dim=1)
    # float32 products resolve a residual to about 1e-5 of the right-hand side
    bound = torch.clamp(norm.sqrt(), min=1e-5, max=0.5) * norm
    step = torch.zeros_like(rhs)
    residual = rhs.clone()
    z = precondition(residual)
    direction = z.clone()
    rz = _dot(residual, z)
    going = torch.ones(len(rhs), dtype=torch.bool)
    for _ in range(max_cg):
        going = going & (residual.flatten(1).norm(dim=1) > bound)
        if not bool(going.any()):
            break
        hd = hess(direction)
        alpha = torch.where(going, rz / _dot(direction, hd), torch.zeros_like(rz))
        step = step + alpha[:, None, None] * direction
        residual = residual - alpha[:, None, None] * hd
        z = precondition(residual)
        rz_next = _dot(residual, z)
        beta = torch.where(going, rz_next / rz, torch.zeros_like(rz))
        direction = z + beta[:, None, None] * direction
        rz = torch.where(going, rz_next, rz)
    return step


def _backtrack(objective, w, step, grad, shrink: float = 0.5, tries: int = 40):
    """Step lengths (P,) meeting Armijo's condition, halved from 1 per problem
    (0 for those that found none)."""
    import torch

    now = objective(w)
    slope = _dot(grad, step)
    length = torch.ones(len(w), dtype=w.dtype)
    for _ in range(tries):
        done = objective(w + length[:, None, None] * step) <= now + 1e-4 * length * slope
        if bool(done.all()):
            break
        length = torch.where(done, length, length * shrink)
    else:
        length = torch.where(done, length, torch.zeros_like(length))
    return length
