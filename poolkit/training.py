"""Training one linear head per pooler × seed, all heads stacked into one model.

Each head is ``nn.Linear(D, num_labels)`` trained with cross-entropy and AdamW,
as in ``BertForSequenceClassification`` with the encoder frozen. All heads are
stacked into one weight tensor ``(heads, D_max, C)`` (narrower features are
zero-padded, which leaves their head's outputs and gradients unchanged) so a
training step is one batched matmul however many poolers and seeds there are.

A head's result depends only on its pooler's features and its seed: its
initial weights and dropout come from a generator seeded by (seed, pooler
name), its batch order from the seed alone (so every pooler sees the same
batches for the same seed), and it stops updating its best weights once its
own early stopping triggers.
"""

import math
import zlib
from dataclasses import dataclass

import numpy as np

from .errors import PoolkitError
from .isolation import DEFAULT_TIMEOUT


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
        for name, value, ok, wanted in checks:
            try:
                good = math.isfinite(float(value)) and ok(float(value))
            except (TypeError, ValueError):
                good = False
            if isinstance(value, bool) or not good:
                raise PoolkitError(f"{name} {value}: give {wanted}")


@dataclass
class HeadResult:
    pooler: str
    seed: int
    probabilities: np.ndarray  # (n_test, num_labels), columns in label-id order
    best_epoch: int
    epochs: int
    validation_loss: float


#: Per-head blocks are padded to multiples of this many floats (64 bytes, the
#: allocator's alignment), so every head's matrices start aligned, as they would
#: alone: BLAS kernels round differently for differently aligned operands.
_ALIGN = 16


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def train_heads(features: dict, labels: np.ndarray, splits: dict, num_labels: int, seeds,
                config: HeadConfig = HeadConfig(), device: str = "cpu", progress: bool = False):
    """Train a head per ``features`` entry × seed; return a list of :class:`HeadResult`
    (names × seeds, in that order).

    ``features[name]`` is ``(N, D_name)`` for all N texts; ``splits`` holds the
    train/validation/test index arrays into them. Early stopping watches the
    validation loss (the training loss when there is no validation split).
    Heads of the same (aligned) width train stacked; a head's result is the
    same bits whatever else is stacked with it.
    """
    by_width = {}
    for name in features:
        by_width.setdefault(_aligned(features[name].shape[1]), []).append(name)
    results = {}
    for width, names in by_width.items():
        for result in _train_stack({name: features[name] for name in names}, width, labels,
                                   splits, num_labels, list(seeds), config, device, progress):
            results[result.pooler, result.seed] = result
    return [results[name, seed] for name in features for seed in seeds]


def _train_stack(features, width, labels, splits, num_labels, seeds, config, device, progress):
    """:func:`train_heads` for feature sets that fit ``width`` (a multiple of ``_ALIGN``).

    Every per-head block (weights, a batch of features, logits, validation and
    test rows) is padded with zeros to a multiple of ``_ALIGN`` floats. Zero
    feature columns and zero rows with zero gradient add nothing; the padding
    makes each head's arithmetic the same whether it trains alone or stacked.
    """
    import torch
    from tqdm.auto import tqdm

    names = list(features)
    heads = [(name, seed) for name in names for seed in seeds]
    n_heads = len(heads)
    dims = [features[name].shape[1] for name in names]
    train, val, test = splits["train"], splits["validation"], splits["test"]
    if len(val) == 0:
        val = train

    shift_scale = {}
    if config.standardize:  # an affine map the head could learn; it only eases training
        for name in names:
            x = features[name][train]
            shift_scale[name] = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-6)

    def stacked(rows, length):  # (P, length, width): standardized rows, then zeros
        out = np.zeros((len(names), length, width), dtype=np.float32)
        for p, name in enumerate(names):
            x = features[name][rows]
            if name in shift_scale:
                shift, scale = shift_scale[name]
                x = (x - shift) / scale
            out[p, : len(rows), : dims[p]] = x
        return torch.from_numpy(out).to(device)

    n_train = len(train)
    # One zero row after each pooler's training rows: what padded batch rows read.
    x_flat = stacked(train, n_train + 1).view(-1, width)  # (P * (n_train + 1), width)
    x_val, x_test = stacked(val, _aligned(len(val))), stacked(test, _aligned(len(test)))
    y_train = torch.from_numpy(labels[train]).to(device)
    y_val = torch.from_numpy(labels[val]).to(device)
    pooler_of_head = torch.tensor([names.index(n) for n, _ in heads], device=device)

    head_gens = [torch.Generator().manual_seed(_head_seed(seed, name)) for name, seed in heads]
    head_dims = [dims[names.index(name)] for name, _ in heads]
    # (heads, C, width), nn.Linear's layout; bias (heads, C, 1). Logits are
    # computed transposed, (heads, C, B): the softmax over a few labels then
    # runs along dim 1 with the batch contiguous, far faster than along a last
    # dim of size C.
    weight = torch.zeros(n_heads, num_labels, width)
    for h, d in enumerate(head_dims):
        weight[h, :, :d] = torch.randn(num_labels, d, generator=head_gens[h]) * 0.02
    weight = weight.to(device)
    bias = torch.zeros(n_heads, num_labels, 1, device=device)
    order_gens = {seed: torch.Generator().manual_seed(seed) for seed in seeds}
    seed_of_head = torch.tensor([seeds.index(s) for _, s in heads])

    best_loss = torch.full((n_heads,), float("inf"))
    best_weight = weight.clone()
    best_bias = bias.clone()
    best_epoch = torch.zeros(n_heads, dtype=torch.long)
    stale = torch.zeros(n_heads, dtype=torch.long)
    epochs_trained = torch.zeros(n_heads, dtype=torch.long)
    # Only heads still early-stopping train: ``live`` lists them, and the
    # parameters and optimizer state hold their rows alone (compacted when a
    # head stops), so a stopped head costs nothing and the others' updates do
    # not depend on it.
    live = torch.arange(n_heads)
    # Gradients are computed by hand (softmax cross-entropy has a closed form),
    # which skips autograd's per-step overhead.
    weight.grad, bias.grad = torch.zeros_like(weight), torch.zeros_like(bias)
    optimizer = _AdamW([weight, bias], config.learning_rate, config.weight_decay)
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
            # x_train[poolers, rows] as one index_select: 4x faster here
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
        with torch.no_grad():
            logits = _logits(x_val, pooler_of_head[live_dev], weight, bias)[:, : len(val)]
            val_loss = _mean_losses(logits, y_val).cpu()
            improved = val_loss < best_loss[live] - 1e-6  # (live,)
            better = live[improved]
            best_loss[better] = val_loss[improved]
            best_epoch[better] = epoch
            best_weight[better.to(device)] = weight[improved.to(device)]
            best_bias[better.to(device)] = bias[improved.to(device)]
            epochs_trained[live] = epoch
            stale[live] = torch.where(improved, 0, stale[live] + 1)
        bar.update(1)
        still = stale[live] < config.patience
        if not still.any():
            break
        if not still.all():
            live = live[still]
            weight, bias = optimizer.keep(still.to(device))
    bar.close()

    logits = _logits(x_test, pooler_of_head, best_weight, best_bias)[:, : len(test)]
    # Softmax in float64 so each row sums to 1 within sklearn's tolerance.
    probs = torch.softmax(logits.double(), dim=-1).cpu().numpy()
    return [
        HeadResult(name, seed, probs[h], int(best_epoch[h]), int(epochs_trained[h]),
                   float(best_loss[h]))
        for h, (name, seed) in enumerate(heads)
    ]


class _AdamW:
    """``torch.optim.AdamW``'s update (betas 0.9/0.999, eps 1e-8, decoupled weight
    decay), written out: creating torch's optimizer imports ``torch._dynamo``,
    which took 1.7 s of a 7 s warm-cache run. A test pins it to torch's."""

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


def _head_seed(seed: int, pooler: str) -> int:
    return (int(seed) * 1_000_003 + zlib.crc32(pooler.encode())) % (2**63)


def train_trainable(cache, feature_set, labels: np.ndarray, splits: dict, num_labels: int, seeds,
                    config: HeadConfig = HeadConfig(), device: str = "cpu",
                    timeout=DEFAULT_TIMEOUT):
    """Train a trainable pooler jointly with its head, per seed, from the token cache.

    Each seed gets a fresh ``pooler.module(H)`` (built under the head's seed)
    and ``nn.Linear(D, C)``, trained end to end with cross-entropy and AdamW
    on random batches of the cached token states, early-stopped on validation
    loss like the fixed poolers' heads. With ``config.standardize`` the token
    states are standardized per dimension with train-split statistics (the
    token-level counterpart of the fixed features' standardization). Returns
    a list of :class:`HeadResult` named by ``feature_set.id``. Each call into
    the plugin (``module``, a forward pass) runs under
    :class:`~poolkit.isolation.plugin_code` with ``timeout`` seconds.
    """
    import torch
    import torch.nn.functional as F

    from .isolation import plugin_code

    train, val, test = splits["train"], splits["validation"], splits["test"]
    if len(val) == 0:
        val = train
    hidden_size = cache.hidden_size
    dim = feature_set.dim
    multi = isinstance(feature_set.source, tuple)
    shift, scale = {}, {}
    for layer in feature_set.layers:
        if config.standardize:
            shift[layer], scale[layer] = _token_stats(cache, train, layer)
        else:
            shift[layer], scale[layer] = torch.zeros(hidden_size), torch.ones(hidden_size)
    y_all = torch.from_numpy(labels)

    def inputs(rows):
        parts, mask = [], None
        for layer in feature_set.layers:
            hidden, mask = cache.gather(rows, layer, shift[layer], scale[layer])
            parts.append(hidden.to(device))
        mask = mask.to(device)
        return (tuple(parts) if multi else parts[0]), mask

    def predict(model, rows):
        model.eval()
        out = []
        with torch.no_grad():
            # Training-sized batches: 256-text ones (~28 MB of states) got fresh
            # pages from the OS on every call, twice the page faults of a whole
            # training run, ~20% of its time.
            for start in range(0, len(rows), config.batch_size):
                hidden, mask = inputs(rows[start : start + config.batch_size])
                with plugin_code(timeout):
                    pooled = model["pooler"](hidden, mask)
                out.append(model["head"](pooled.float()))
        return torch.cat(out)

    results = []
    for seed in seeds:
        head_seed = _head_seed(seed, feature_set.id)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(head_seed)
            with plugin_code(timeout):
                module = feature_set.pooler.module(hidden_size)
            head = torch.nn.Linear(dim, num_labels)
            with torch.no_grad():
                head.weight.normal_(0.0, 0.02)
                head.bias.zero_()
        model = torch.nn.ModuleDict({"pooler": module, "head": head}).to(device)
        optimizer = _AdamW(list(model.parameters()), config.learning_rate, config.weight_decay)
        order = torch.Generator().manual_seed(seed)
        dropout = torch.Generator().manual_seed(head_seed)
        best = (float("inf"), None, 0)
        stale, epochs = 0, 0
        for epoch in range(1, config.max_epochs + 1):
            epochs = epoch
            model.train()
            perm = torch.randperm(len(train), generator=order).numpy()
            for start in range(0, len(train), config.batch_size):
                rows = train[perm[start : start + config.batch_size]]
                hidden, mask = inputs(rows)
                with plugin_code(timeout):
                    pooled = model["pooler"](hidden, mask)
                pooled = pooled.float()
                if config.dropout > 0:
                    keep = torch.rand(pooled.shape, generator=dropout) >= config.dropout
                    pooled = pooled * keep.to(device) / (1 - config.dropout)
                loss = F.cross_entropy(model["head"](pooled), y_all[rows].to(device))
                model.zero_grad()
                loss.backward()
                optimizer.step()
            val_loss = float(F.cross_entropy(predict(model, val), y_all[val].to(device)))
            if val_loss < best[0] - 1e-6:
                state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                best, stale = (val_loss, state, epoch), 0
            else:
                stale += 1
                if stale >= config.patience:
                    break
        model.load_state_dict(best[1])
        probs = torch.softmax(predict(model, test).double(), dim=-1).cpu().numpy()
        results.append(HeadResult(feature_set.id, seed, probs, best[2], epochs, best[0]))
    return results


def _token_stats(cache, rows, layer, chunk: int = 1024):
    """Per-dimension mean and std of the real-token states of ``rows`` at ``layer``."""
    import torch

    total = torch.zeros(cache.hidden_size, dtype=torch.float64)
    squares = torch.zeros(cache.hidden_size, dtype=torch.float64)
    states = cache.states(layer)
    for start in range(0, len(rows), chunk):
        # The real tokens straight from the cache: no padding to add and take off.
        real = torch.from_numpy(states[cache.token_rows(rows[start : start + chunk])]).double()
        total += real.sum(dim=0)
        squares += (real**2).sum(dim=0)
    count = max(int(cache.lengths[rows].sum()), 1)
    mean = total / count
    std = (squares / count - mean**2).clamp(min=0).sqrt()
    return mean.float(), std.clamp(min=1e-6).float()
