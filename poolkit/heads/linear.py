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
    import torch
    from tqdm.auto import tqdm

    config, device, labels = task.config, task.device, task.labels
    names = list(features)
    heads = [(name, seed) for name in names for seed in seeds]
    n_heads = len(heads)
    dims = [features[name].shape[1] for name in names]
    train, val, test = task.train, task.validation, task.test
    standardize = ({name: Standardization.of_rows(features[name][train]) for name in names}
                   if config.standardize else {})

    def stacked(rows, length):  # (P, length, width): standardized rows, then zeros
        out = np.zeros((len(names), length, width), dtype=np.float32)
        for p, name in enumerate(names):
            x = features[name][rows]
            if name in standardize:
                x = standardize[name].apply(x)
            out[p, : len(rows), : dims[p]] = x
        return torch.from_numpy(out).to(device)

    n_train = len(train)
    # One zero row after each pooler's training rows: what padded batch rows read.
    x_flat = stacked(train, n_train + 1).view(-1, width)  # (P * (n_train + 1), width)
    x_val, x_test = stacked(val, _aligned(len(val))), stacked(test, _aligned(len(test)))
    y_train = torch.from_numpy(labels[train]).to(device)
    y_val = torch.from_numpy(labels[val]).to(device)
    pooler_of_head = torch.tensor([names.index(n) for n, _ in heads], device=device)

    head_gens = [torch.Generator().manual_seed(head_seed(seed, name)) for name, seed in heads]
    head_dims = [dims[names.index(name)] for name, _ in heads]
    # (heads, C, width), nn.Linear's layout; bias (heads, C, 1). Logits are
    # computed transposed, (heads, C, B): the softmax over a few labels then
    # runs along dim 1 with the batch contiguous, far faster than along a last
    # dim of size C.
    num_labels = task.num_labels
    weight = torch.zeros(n_heads, num_labels, width)
    for h, d in enumerate(head_dims):
        weight[h, :, :d] = torch.randn(num_labels, d, generator=head_gens[h]) * 0.02
    weight = weight.to(device)
    bias = torch.zeros(n_heads, num_labels, 1, device=device)
    order_gens = {seed: torch.Generator().manual_seed(seed) for seed in seeds}
    seed_of_head = torch.tensor([seeds.index(s) for _, s in heads])

    stopping = EarlyStopping(n_heads, config.patience)
    best_weight = weight.clone()
    best_bias = bias.clone()
    # Only heads still early-stopping train: ``live`` lists them, and the
    # parameters and optimizer state hold their rows alone (compacted when a
    # head stops), so a stopped head costs nothing and the others' updates do
    # not depend on it.
    live = torch.arange(n_heads)
    # Gradients are computed by hand (softmax cross-entropy has a closed form),
    # which skips autograd's per-step overhead.
    weight.grad, bias.grad = torch.zeros_like(weight), torch.zeros_like(bias)
    optimizer = AdamW([weight, bias], config.learning_rate, config.weight_decay)
    minus_one = torch.full((n_heads, 1, config.batch_size), -1.0, device=device)
    bar = tqdm(total=config.max_epochs, desc="training heads", unit="epoch",
               disable=not progress, leave=False)
    for epoch in range(1, config.max_epochs + 1):
        live_dev = live.to(device)
        n_live = len(live)
        perms = torch.stack([torch.randperm(n_train, generator=order_gens[s]) for s in seeds])
        perms = perms[seed_of_head[live]].to(device)  # (live, n_train)
        # Row offset of each live head's pooler in x_flat.
        offsets = (pooler_of_head[live_dev] * (n_train + 1))[:, None]
        for start in range(0, n_train, config.batch_size):
            rows = perms[:, start : start + config.batch_size]  # (live, B)
            batch = rows.shape[1]
            padded = _aligned(batch)
            index = offsets + rows
            if padded > batch:  # the zero row, for the padding
                index = torch.cat([index, (offsets + n_train).expand(n_live, padded - batch)], 1)
            # x_train[poolers, rows] as one index_select: far faster than advanced indexing
            x = x_flat.index_select(0, index.view(-1)).view(n_live, padded, width)
            if config.dropout > 0:
                # Each head draws a mask of its own width, so its random stream
                # does not depend on the other poolers in the run.
                keep = torch.zeros(n_live, padded, width, dtype=torch.bool)
                for row, h in enumerate(live.tolist()):
                    d = head_dims[h]
                    keep[row, :batch, :d] = torch.rand(batch, d, generator=head_gens[h]) >= config.dropout
                x = x * keep.to(device) / (1 - config.dropout)
            logits = _per_head(torch.baddbmm, bias, weight, x.transpose(1, 2))  # (live, C, B)
            # d(mean cross-entropy)/d(logits) = (softmax - one_hot) / B, per head
            grad = _softmax_over_labels(logits)
            grad[:, :, :batch].scatter_add_(1, y_train[rows].unsqueeze(1),
                                            minus_one[:n_live, :, :batch])
            grad[:, :, batch:] = 0
            grad /= batch
            weight.grad.copy_(_per_head(torch.bmm, grad, x))  # (live, C, width)
            torch.sum(grad, dim=2, keepdim=True, out=bias.grad)
            optimizer.step()
        bar.update(1)
        if task.final:  # a fixed number of epochs: nothing to stop on
            continue
        with torch.no_grad():
            logits = _logits(x_val, pooler_of_head[live_dev], weight, bias)[:, : len(val)]
            improved = stopping.update(live, _mean_losses(logits, y_val).cpu(), epoch)
            better = live[improved]
            best_weight[better.to(device)] = weight[improved.to(device)]
            best_bias[better.to(device)] = bias[improved.to(device)]
        still = stopping.going(live)
        if not still.any():
            break
        if not still.all():
            live = live[still]
            weight, bias = optimizer.keep(still.to(device))
    bar.close()
    if task.final:
        best_weight, best_bias = weight, bias
        stopping.best_epoch[:] = stopping.epochs[:] = config.max_epochs

    logits = _logits(x_test, pooler_of_head, best_weight, best_bias)[:, : len(test)]
    # Softmax in float64 so each row sums to 1 within sklearn's tolerance.
    probs = torch.softmax(logits.double(), dim=-1).cpu().numpy()

    def weights(h, name):  # a final head's own parameters, and its standardization
        d = head_dims[h]
        scale = standardize.get(name)
        return {"weight": best_weight[h, :, :d].cpu().clone(),
                "bias": best_bias[h, :, 0].cpu().clone(),
                "shift": torch.as_tensor(scale.shift if scale else np.zeros(d, np.float32)),
                "scale": torch.as_tensor(scale.scale if scale else np.ones(d, np.float32))}

    return [
        TrainedHead(name, seed, probs[h], int(stopping.best_epoch[h]), int(stopping.epochs[h]),
                    float(stopping.best_loss[h]), fold=task.fold,
                    weights=weights(h, name) if task.final else None)
        for h, (name, seed) in enumerate(heads)
    ]


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


