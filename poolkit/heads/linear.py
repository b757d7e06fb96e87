"""Linear heads on fixed features: ``nn.Linear(D, num_labels)`` per feature set × seed.

As in ``BertForSequenceClassification`` with the encoder frozen: cross-entropy,
AdamW, early stopping on the validation loss. Heads are stacked into one weight
tensor ``(heads, C, D)`` per width, so a training step is one batched matmul
however many poolers and seeds there are.

A head's result depends only on its pooler's features and its seed: its
initial weights and dropout come from a generator seeded by (seed, feature
set), its batch order from the seed alone (so every pooler sees the same
batches for the same seed), it stops updating its best weights once its own
early stopping triggers, and its arithmetic is the same bits whatever else
is stacked with it.
"""

import numpy as np

from poolkit.heads.base import (
    AdamW,
    EarlyStopping,
    FailedHead,
    HeadTask,
    Standardization,
    TrainedHead,
    head_seed,
)


class LinearHeads:
    """The :class:`~poolkit.heads.base.HeadKind` of fixed poolers: stacked linear heads on
    their pooled ``features`` (``{feature set id: (N, D)}``)."""

    def __init__(self, features: dict, progress: bool = False):
        self.features = features
        self.progress = progress

    def wants(self, feature_set) -> bool:
        return not feature_set.trainable and not feature_set.finetuned

    def train(self, task: HeadTask, jobs: list):
        """Feature sets missing the same seeds train as one stack."""
        groups = {}
        for feature_set, seeds in jobs:
            if feature_set.id not in self.features:
                yield FailedHead(feature_set.id, "no pooled features")
                continue
            groups.setdefault(tuple(seeds), []).append(feature_set.id)
        for seeds, keys in groups.items():
            yield from train_heads({key: self.features[key] for key in keys}, task, list(seeds),
                                   self.progress)


#: Per-head blocks are padded to multiples of this many floats (64 bytes, the
#: allocator's alignment), so every head's matrices start aligned, as they would
#: alone: BLAS kernels round differently for differently aligned operands.
_ALIGN = 16


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def train_heads(features: dict, task: HeadTask, seeds, progress: bool = False) -> list:
    """Train a head per ``features`` entry × seed; return a list of :class:`TrainedHead`
    (names × seeds, in that order).

    ``features[name]`` is ``(N, D_name)`` for all N texts, indexed by the
    task's splits. Early stopping watches the validation loss. Heads of the
    same (aligned) width train stacked; a head's result is the same bits
    whatever else is stacked with it.
    """
    by_width = {}
    for name in features:
        by_width.setdefault(_aligned(features[name].shape[1]), []).append(name)
    results = {}
    for width, names in by_width.items():
        for result in _train_stack({name: features[name] for name in names}, width, task,
                                   list(seeds), progress):
            results[result.feature_set, result.seed] = result
    return [results[name, seed] for name in features for seed in seeds]


def _train_stack(features, width, task, seeds, progress):
    """:func:`train_heads` for feature sets that fit ``width`` (a multiple of ``_ALIGN``).

    Every per-head block (weights, a batch of features, logits, validation and
    test rows) is padded with zeros to a multiple of ``_ALIGN`` floats. Zero
    feature columns and zero rows with zero gradient add nothing; the padding
    makes each head's arithmetic the same whether it trains alone or stacked.
    """
    from tqdm.auto import tqdm

    stack = _HeadStack(features, width, task, seeds)
    config = task.config
    bar = tqdm(total=config.max_epochs, desc="training heads", unit="epoch",
               disable=not progress, leave=False)
    for epoch in range(1, config.max_epochs + 1):
        stack.epoch()
        bar.update(1)
        if task.final:  # a fixed number of epochs: nothing to stop on
            continue
        if stack.all_stopped(epoch):
            break
    bar.close()
    return stack.trained()


class _HeadStack:
    """Every head of ``features`` × ``seeds`` (one fold), stacked: their features padded
    to ``width`` and standardized, their parameters ``(heads, C, width)``, trained together
    by AdamW with hand-computed gradients, each early-stopping on its own."""

    def __init__(self, features, width, task, seeds):
        import torch

        config, device, labels = task.config, task.device, task.labels
        self.task, self.config, self.device = task, config, device
        self.width, self.seeds = width, seeds
        names = list(features)
        self.heads = heads = [(name, seed) for name in names for seed in seeds]
        n_heads = len(heads)
        dims = [features[name].shape[1] for name in names]
        train, val = task.train, task.validation
        self.standardize = ({name: Standardization.of_rows(features[name][train])
                             for name in names} if config.standardize else {})
        self.n_train = n_train = len(train)
        stacked = self._stacked(features, names, dims)
        # One zero row after each pooler's training rows: what padded batch rows read.
        self.x_flat = stacked(train, n_train + 1).view(-1, width)  # (P * (n_train + 1), width)
        self.x_val = stacked(val, _aligned(len(val)))
        self.x_test = stacked(task.test, _aligned(len(task.test)))
        self.y_train = torch.from_numpy(labels[train]).to(device)
        self.y_val = torch.from_numpy(labels[val]).to(device)
        self.pooler_of_head = torch.tensor([names.index(n) for n, _ in heads], device=device)
        self.head_gens = [torch.Generator().manual_seed(head_seed(seed, name))
                          for name, seed in heads]
        self.head_dims = [dims[names.index(name)] for name, _ in heads]
        self.weight, self.bias = self._initial_parameters(task.num_labels)
        self.order_gens = {seed: torch.Generator().manual_seed(seed) for seed in seeds}
        self.seed_of_head = torch.tensor([seeds.index(s) for _, s in heads])
        self.stopping = EarlyStopping(n_heads, config.patience)
        self.best_weight, self.best_bias = self.weight.clone(), self.bias.clone()
        # Only heads still early-stopping train: ``live`` lists them, and the
        # parameters and optimizer state hold their rows alone (compacted when a
        # head stops), so a stopped head costs nothing and the others' updates do
        # not depend on it.
        self.live = torch.arange(n_heads)
        # Gradients are computed by hand (softmax cross-entropy has a closed form),
        # which skips autograd's per-step overhead.
        self.weight.grad = torch.zeros_like(self.weight)
        self.bias.grad = torch.zeros_like(self.bias)
        self.optimizer = AdamW([self.weight, self.bias], config.learning_rate,
                               config.weight_decay)
        self.minus_one = torch.full((n_heads, 1, config.batch_size), -1.0, device=device)

    def _stacked(self, features, names, dims):
        """``stacked(rows, length)``: (P, length, width) standardized rows, then zeros."""
        import torch

        def stacked(rows, length):
            out = np.zeros((len(names), length, self.width), dtype=np.float32)
            for p, name in enumerate(names):
                x = features[name][rows]
                if name in self.standardize:
                    x = self.standardize[name].apply(x)
                out[p, : len(rows), : dims[p]] = x
            return torch.from_numpy(out).to(self.device)

        return stacked

    def _initial_parameters(self, num_labels: int) -> tuple:
        """(heads, C, width), nn.Linear's layout; bias (heads, C, 1). Logits are computed
        transposed, (heads, C, B): the softmax over a few labels then runs along dim 1
        with the batch contiguous, far faster than along a last dim of size C."""
        import torch

        weight = torch.zeros(len(self.heads), num_labels, self.width)
        for h, d in enumerate(self.head_dims):
            weight[h, :, :d] = torch.randn(num_labels, d, generator=self.head_gens[h]) * 0.02
        bias = torch.zeros(len(self.heads), num_labels, 1, device=self.device)
        return weight.to(self.device), bias

    def epoch(self) -> None:
        """One pass over the training rows, in each seed's order, for the live heads."""
        import torch

        config, live, n_train = self.config, self.live, self.n_train
        live_dev = live.to(self.device)
        perms = torch.stack([torch.randperm(n_train, generator=self.order_gens[s])
                             for s in self.seeds])
        perms = perms[self.seed_of_head[live]].to(self.device)  # (live, n_train)
        # Row offset of each live head's pooler in x_flat.
        offsets = (self.pooler_of_head[live_dev] * (n_train + 1))[:, None]
        for start in range(0, n_train, config.batch_size):
            self._step(perms[:, start : start + config.batch_size], offsets)  # (live, B)

    def _step(self, rows, offsets) -> None:
        """One optimizer step of the live heads on the training ``rows`` (live, B)."""
        import torch

        config, live, width = self.config, self.live, self.width
        n_live, batch = len(live), rows.shape[1]
        padded = _aligned(batch)
        index = offsets + rows
        if padded > batch:  # the zero row, for the padding
            index = torch.cat([index, (offsets + self.n_train).expand(n_live, padded - batch)],
                              1)
        # x_train[poolers, rows] as one index_select: far faster than advanced indexing
        x = self.x_flat.index_select(0, index.view(-1)).view(n_live, padded, width)
        if config.dropout > 0:
            # Each head draws a mask of its own width, so its random stream
            # does not depend on the other poolers in the run.
            keep = torch.zeros(n_live, padded, width, dtype=torch.bool)
            for row, h in enumerate(live.tolist()):
                d = self.head_dims[h]
                keep[row, :batch, :d] = torch.rand(batch, d, generator=self.head_gens[h]) \
                    >= config.dropout
            x = x * keep.to(self.device) / (1 - config.dropout)
        logits = _per_head(torch.baddbmm, self.bias, self.weight, x.transpose(1, 2))  # (live, C, B)
        # d(mean cross-entropy)/d(logits) = (softmax - one_hot) / B, per head
        grad = _softmax_over_labels(logits)
        grad[:, :, :batch].scatter_add_(1, self.y_train[rows].unsqueeze(1),
                                        self.minus_one[:n_live, :, :batch])
        grad[:, :, batch:] = 0
        grad /= batch
        self.weight.grad.copy_(_per_head(torch.bmm, grad, x))  # (live, C, width)
        torch.sum(grad, dim=2, keepdim=True, out=self.bias.grad)
        self.optimizer.step()

    def all_stopped(self, epoch: int) -> bool:
        """Early stopping after ``epoch``: each live head's validation loss, its best
        parameters kept; the stopped heads dropped from the live ones."""
        import torch

        device, live = self.device, self.live
        with torch.no_grad():
            logits = _logits(self.x_val, self.pooler_of_head[live.to(device)], self.weight,
                             self.bias)[:, : len(self.task.validation)]
            improved = self.stopping.update(live, _mean_losses(logits, self.y_val).cpu(), epoch)
            better = live[improved]
            self.best_weight[better.to(device)] = self.weight[improved.to(device)]
            self.best_bias[better.to(device)] = self.bias[improved.to(device)]
        still = self.stopping.going(live)
        if not still.any():
            return True
        if not still.all():
            self.live = live[still]
            self.weight, self.bias = self.optimizer.keep(still.to(device))
        return False

    def trained(self) -> list:
        """Each head's :class:`~poolkit.heads.base.TrainedHead`: its best parameters'
        test probabilities (with a final head, its weights and standardization)."""
        import torch

        task, stopping = self.task, self.stopping
        if task.final:
            self.best_weight, self.best_bias = self.weight, self.bias
            stopping.best_epoch[:] = stopping.epochs[:] = self.config.max_epochs
        logits = _logits(self.x_test, self.pooler_of_head, self.best_weight,
                         self.best_bias)[:, : len(task.test)]
        # Softmax in float64 so each row sums to 1 within sklearn's tolerance.
        probs = torch.softmax(logits.double(), dim=-1).cpu().numpy()
        return [
            TrainedHead(name, seed, probs[h], int(stopping.best_epoch[h]),
                        int(stopping.epochs[h]), float(stopping.best_loss[h]), fold=task.fold,
                        weights=self._weights(h, name) if task.final else None)
            for h, (name, seed) in enumerate(self.heads)
        ]

    def _weights(self, h: int, name: str) -> dict:
        """A final head's own parameters, and its standardization."""
        import torch

        d = self.head_dims[h]
        scale = self.standardize.get(name)
        return {"weight": self.best_weight[h, :, :d].cpu().clone(),
                "bias": self.best_bias[h, :, 0].cpu().clone(),
                "shift": torch.as_tensor(scale.shift if scale else np.zeros(d, np.float32)),
                "scale": torch.as_tensor(scale.scale if scale else np.ones(d, np.float32))}


def _logits(x, poolers, weight, bias):
    """Logits ``(heads, n, C)`` of heads (``weight`` ``(heads, C, D)``, ``bias``
    ``(heads, C, 1)``) on their poolers' rows of ``x`` ``(P, n, D)``.

    One batched matmul per pooler over its heads, each head a ``(C, D) @ (D, n)``
    product whatever else is stacked (a single ``(n, D) @ (D, heads * C)``
    product rounds differently as the number of heads changes).
    """
    import torch

    heads, num_labels, dim = weight.shape
    out = torch.empty(heads, x.shape[1], num_labels, device=x.device)
    for p in poolers.unique().tolist():
        idx = (poolers == p).nonzero().squeeze(1)
        rows = x[p].T.unsqueeze(0).expand(len(idx), dim, x.shape[1])  # no copy per head
        out[idx] = _per_head(torch.baddbmm, bias[idx], weight[idx], rows).transpose(1, 2)
    return out


def _softmax_over_labels(logits):
    """Softmax over dim 1 of ``logits`` ``(heads, C, B)``, in place.

    Written out because ``torch.softmax(dim=1)`` vectorizes across the heads,
    so a head's values change in their last bits with the number of heads
    beside it; these element-wise steps do not.
    """
    logits -= logits.amax(dim=1, keepdim=True)
    logits.exp_()
    return logits.div_(logits.sum(dim=1, keepdim=True))


def _per_head(op, *tensors):
    """``op`` (``torch.bmm``, ``torch.baddbmm``) over stacked heads (dim 0),
    computed on at least two: a lone matrix takes another BLAS path (a
    matrix-vector product for one column) that rounds differently, and a head's
    result must not depend on how many heads train beside it."""
    if tensors[0].shape[0] != 1:
        return op(*tensors)
    # expand, not cat: a copy would change the strides, and with them the BLAS call
    return op(*(t.expand(2, *t.shape[1:]) for t in tensors))[:1]


def _mean_losses(logits, y):
    """Mean cross-entropy per head: ``logits`` ``(heads, n, C)``, ``y`` ``(n,)`` -> ``(heads,)``."""
    import torch

    n_heads, n, c = logits.shape
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, c), y.repeat(n_heads), reduction="none"
    ).view(n_heads, n).mean(dim=1)


