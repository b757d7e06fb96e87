"""Heads: what is trained on pooled token states to classify texts, and how.

A *head kind* trains the heads of some feature sets, one per feature set × seed,
and yields a :class:`TrainedHead` (test-split probabilities and how training went)
or a :class:`FailedHead` for each. The kinds a run uses:

- :class:`~poolkit.heads.linear.LinearHeads`: ``nn.Linear(D, num_labels)`` on a
  fixed pooler's features, as ``BertForSequenceClassification``'s classifier
  with the encoder frozen; many heads stacked into one batched model.
- :class:`~poolkit.heads.trainable.TrainablePoolerHeads`: a trainable pooler's
  module and its linear head, trained together from the cached token states.

A new kind (the encoder fine-tuned with a pooler and head; a scikit-learn
classifier on fixed features) implements :class:`HeadKind` and is added to the
list in :func:`poolkit.pipeline.stages.train`. Every kind trains with cross-entropy
and AdamW (:class:`AdamW`), stops early on the validation loss
(:class:`EarlyStopping`), standardizes its inputs with train statistics
(:class:`Standardization`) and seeds its randomness per head (:func:`head_seed`),
so a head's result depends only on its feature set and seed.
"""

import math
import zlib
from dataclasses import dataclass
from typing import Iterator, Protocol

import numpy as np

from poolkit.errors import PoolkitError

#: A validation loss counts as better only when it is this much below the best.
MIN_DELTA = 1e-6


def check_ranges(checks) -> None:
    """Raise :class:`PoolkitError` naming the first of ``checks`` (``(option, value,
    ok, wanted)``) whose value is not a finite number (nor a bool) with ``ok(value)``."""
    for name, value, ok, wanted in checks:
        try:
            good = math.isfinite(float(value)) and ok(float(value))
        except (TypeError, ValueError):
            good = False
        if isinstance(value, bool) or not good:
            raise PoolkitError(f"{name} {value}: give {wanted}")


@dataclass
class HeadConfig:
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 64
    max_epochs: int = 100
    patience: int = 5
    dropout: float = 0.0  # > 0 costs a generator call per head and step
    standardize: bool = True

    def validate(self) -> None:
        """Raise :class:`PoolkitError` naming the first setting out of its range."""
        checks = (
            ("--lr", self.learning_rate, lambda v: v > 0, "a number above 0"),
            ("weight decay", self.weight_decay, lambda v: v >= 0, "a number of 0 or more"),
            ("--dropout", self.dropout, lambda v: 0 <= v < 1, "a number from 0 up to 1"),
            ("batch size", self.batch_size, lambda v: v >= 1 and v == int(v), "an integer >= 1"),
            ("--epochs", self.max_epochs, lambda v: v >= 1 and v == int(v), "an integer >= 1"),
            ("patience", self.patience, lambda v: v >= 1 and v == int(v), "an integer >= 1"),
        )
        check_ranges(checks)


@dataclass(frozen=True)
class FineTuneConfig:
    """How the encoder is fine-tuned (the head's own learning rate and weight decay
    are :class:`~poolkit.heads.base.HeadConfig`'s ``--lr`` and weight decay).

    ``batch_size`` texts per forward pass, ``accumulation`` passes per optimizer
    step (the optimizer's batch is their product); ``warmup`` the fraction of all
    steps with a linearly rising learning rate; ``patience`` epochs without a
    better validation loss before a job stops."""

    epochs: int = 3
    batch_size: int = 32
    encoder_lr: float = 2e-5
    warmup: float = 0.1
    max_grad_norm: float = 1.0
    accumulation: int = 1
    patience: int = 1

    def validate(self) -> None:
        checks = (
            ("--finetune-epochs", self.epochs, lambda v: v >= 1 and v == int(v), "an integer >= 1"),
            ("--finetune-batch-size", self.batch_size, lambda v: v >= 1 and v == int(v),
             "an integer >= 1"),
            ("--encoder-lr", self.encoder_lr, lambda v: v > 0,
             "a number above 0 (at 0 the encoder stays as it was: that is the frozen row)"),
            ("warmup", self.warmup, lambda v: 0 <= v < 1, "a fraction from 0 up to 1"),
            ("max_grad_norm", self.max_grad_norm, lambda v: v > 0, "a number above 0"),
            ("--grad-accum", self.accumulation, lambda v: v >= 1 and v == int(v),
             "an integer >= 1"),
            ("patience", self.patience, lambda v: v >= 1 and v == int(v), "an integer >= 1"),
        )
        check_ranges(checks)


@dataclass(frozen=True)
class HeadTask:
    """What the heads of one fold learn: ``labels`` ``(N,)`` label ids of all texts,
    ``splits`` (the fold's train/validation/test index arrays into them), the
    settings, and which fold it is (0 for a single split)."""

    labels: np.ndarray
    splits: dict
    num_labels: int
    config: HeadConfig
    device: str = "cpu"
    fold: int = 0
    folds: int = 1
    #: a final head (:mod:`poolkit.winner.final`): ``config.max_epochs`` epochs on the training
    #: rows, no validation and no early stopping, the last weights kept and returned
    final: bool = False

    @property
    def train(self) -> np.ndarray:
        return self.splits["train"]

    @property
    def validation(self) -> np.ndarray:
        """The validation rows; the training rows when there is no validation split."""
        rows = self.splits["validation"]
        return rows if len(rows) else self.splits["train"]

    @property
    def test(self) -> np.ndarray:
        return self.splits["test"]


@dataclass
class TrainedHead:
    feature_set: str  # the feature set's id, e.g. "mean@6"
    seed: int
    probabilities: np.ndarray  # (n_test, num_labels) on its fold's test items, label-id order
    best_epoch: int
    epochs: int
    validation_loss: float
    #: ``{metric: value}`` on the test split, once scored (saved with the head, so a
    #: re-run that reuses it scores nothing)
    metrics: dict | None = None
    fold: int = 0
    #: a final head's parameters ``{name: tensor}`` (only for :attr:`HeadTask.final`)
    weights: dict | None = None


@dataclass
class FailedHead:
    feature_set: str
    reason: str  # one line


class HeadKind(Protocol):
    """A way of training heads; see the module docstring for the kinds."""

    def wants(self, feature_set) -> bool:
        """Whether this kind trains ``feature_set``'s heads (a
        :class:`~poolkit.pooling.features.FeatureSet`)."""

    def train(self, task: HeadTask, jobs: list) -> Iterator["TrainedHead | FailedHead"]:
        """Train the heads in ``jobs`` (``[(FeatureSet, [seeds])]``), yielding each one's
        result as it finishes (so a run can save it at once)."""


class EarlyStopping:
    """Per head: the best validation loss so far and its epoch; a head stops after
    ``patience`` epochs in a row without a loss :data:`MIN_DELTA` below its best.

    Losses are compared in ``dtype`` (torch's; default float32).
    """

    def __init__(self, heads: int, patience: int, dtype=None):
        import torch

        self.patience = patience
        self.best_loss = torch.full((heads,), float("inf"), dtype=dtype or torch.float32)
        self.best_epoch = torch.zeros(heads, dtype=torch.long)
        self.epochs = torch.zeros(heads, dtype=torch.long)
        self.stale = torch.zeros(heads, dtype=torch.long)

    def update(self, heads, losses, epoch: int):
        """Record ``epoch``'s validation ``losses`` of ``heads`` (index tensor); returns
        which of them improved (a bool tensor)."""
        import torch

        improved = losses < self.best_loss[heads] - MIN_DELTA
        better = heads[improved]
        self.best_loss[better] = losses[improved]
        self.best_epoch[better] = epoch
        self.epochs[heads] = epoch
        self.stale[heads] = torch.where(improved, 0, self.stale[heads] + 1)
        return improved

    def going(self, heads):
        """Which of ``heads`` have not stopped (a bool tensor)."""
        return self.stale[heads] < self.patience


@dataclass(frozen=True)
class Standardization:
    """``(x - shift) / scale`` per dimension, with statistics of the training split.

    An affine map a linear head could learn itself; it only eases training.
    ``shift`` and ``scale`` are ``(D,)`` (numpy or torch, as fitted).
    """

    shift: object
    scale: object

    @classmethod
    def of_rows(cls, x: np.ndarray) -> "Standardization":
        """From fixed features ``x`` ``(n, D)``: their mean and std (at least 1e-6)."""
        return cls(x.mean(axis=0), np.maximum(x.std(axis=0), 1e-6))

    @classmethod
    def of_sums(cls, total, squares, count: int) -> "Standardization":
        """From the float64 sums of token states and of their squares over ``count``
        tokens: their mean and std (at least 1e-6), as float32 tensors."""
        import torch

        count = max(count, 1)
        mean = torch.as_tensor(total, dtype=torch.float64) / count
        std = (torch.as_tensor(squares, dtype=torch.float64) / count - mean**2).clamp(min=0).sqrt()
        return cls(mean.float(), std.clamp(min=1e-6).float())

    def apply(self, x):
        return (x - self.shift) / self.scale


def head_seed(seed: int, feature_set: str) -> int:
    """The seed of one head's own randomness (initial weights, dropout)."""
    return (int(seed) * 1_000_003 + zlib.crc32(feature_set.encode())) % (2**63)


class AdamW:
    """``torch.optim.AdamW``'s update (betas 0.9/0.999, eps 1e-8, decoupled weight
    decay), written out: creating torch's optimizer imports ``torch._dynamo``,
    seconds of a warm-cache run. A test pins it to torch's."""

    def __init__(self, params, lr: float, weight_decay: float, betas=(0.9, 0.999), eps=1e-8):
        import torch

        self.params, self.lr, self.weight_decay, self.betas, self.eps = params, lr, weight_decay, betas, eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.steps = [0] * len(params)  # per parameter, as torch counts them

    def keep(self, rows):
        """Keep only ``rows`` (a bool mask over dim 0) of every parameter, its
        gradient and its optimizer state; returns the new parameters."""
        for i, p in enumerate(self.params):
            kept = p[rows]
            if p.grad is not None:
                kept.grad = p.grad[rows]
            self.params[i], self.m[i], self.v[i] = kept, self.m[i][rows], self.v[i][rows]
        return self.params

    def step(self) -> None:
        import torch

        beta1, beta2 = self.betas
        with torch.no_grad():
            for i, (p, m, v) in enumerate(zip(self.params, self.m, self.v)):
                if p.grad is None:  # as torch: a parameter without a gradient is left alone
                    continue
                self.steps[i] += 1
                correction1 = 1 - beta1 ** self.steps[i]
                correction2_sqrt = (1 - beta2 ** self.steps[i]) ** 0.5
                p.mul_(1 - self.lr * self.weight_decay)
                m.lerp_(p.grad, 1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                denom = (v.sqrt() / correction2_sqrt).add_(self.eps)
                p.addcdiv_(m, denom, value=-self.lr / correction1)
