"""Trainable poolers: a pooler's own module and a linear head, trained together.

Per seed, a fresh ``pooler.module(H)`` and ``nn.Linear(D, num_labels)`` learn
end to end with cross-entropy and AdamW on random batches of the cached token
states, early-stopped on the validation loss like the fixed poolers' heads.
Every call into the plugin runs under :class:`~poolkit.pooling.isolation.plugin_code`.
"""

from poolkit.errors import NEEDS_PAIRS, PluginFailure
from poolkit.heads.base import (
    AdamW,
    EarlyStopping,
    FailedHead,
    HeadTask,
    Standardization,
    TrainedHead,
    head_seed,
)
from poolkit.pooling.isolation import DEFAULT_TIMEOUT, plugin_code


class TrainablePoolerHeads:
    """The :class:`~poolkit.heads.base.HeadKind` of trainable poolers, reading ``cache``
    (a :class:`~poolkit.encoding.cache.HiddenStateCache`). ``timeout`` bounds each call into
    the plugin; a pooler that fails is a :class:`~poolkit.heads.base.FailedHead` (the heads
    of its seeds that finished before are kept)."""

    def __init__(self, cache, timeout=DEFAULT_TIMEOUT, log=lambda message: None):
        self.cache, self.timeout, self.log = cache, timeout, log
        self.moments = {}  # token_standardization's per-text sums, for every fold and pooler
        self.spare = []  # the last pooler's in-memory blocks, written over by the next one's

    def wants(self, feature_set) -> bool:
        return feature_set.trainable and not feature_set.finetuned

    def train(self, task: HeadTask, jobs: list):
        for feature_set, seeds in jobs:
            fold = f", fold {task.fold + 1} of {task.folds}" if task.folds > 1 else ""
            self.log(f"training pooler '{feature_set.pooler_name}' (layer {feature_set.layer}"
                     f"{fold}) with its heads")
            heads = train_trainable(self.cache, feature_set, task, seeds, self.timeout,
                                    self.moments, self.spare)
            while True:
                try:
                    # No budget for the whole training: each call into the pooler has its own.
                    with plugin_code(timeout=None):
                        head = next(heads, None)
                except PluginFailure as exc:
                    yield FailedHead(feature_set.id, exc.reason)
                    break
                if head is None:
                    break
                yield head


def train_trainable(cache, feature_set, task: HeadTask, seeds, timeout, moments: dict,
                    spare: list):
    """Train ``feature_set``'s trainable pooler jointly with its head, per seed; yield
    each seed's :class:`~poolkit.heads.base.TrainedHead` as it finishes.

    With ``task.config.standardize`` the token states are standardized per
    dimension with train-split statistics (the token-level counterpart of the
    fixed features' standardization); ``moments`` keeps what
    :func:`token_standardization` reads once for every fold (pass the same dict to each),
    ``spare`` the in-memory blocks of the last call (pass the same list to each, one
    call after the other: each writes over the last one's).
    """
    import torch
    import torch.nn.functional as F

    config, device = task.config, task.device
    train, val = task.train, task.validation
    if feature_set.segments and cache.pair_starts is None:
        raise PluginFailure(NEEDS_PAIRS)
    states = _TokenInputs(cache, feature_set, task, timeout, moments, spare)
    y_all = torch.from_numpy(task.labels)
    for seed in seeds:
        own_seed = head_seed(seed, feature_set.id)
        model = _new_model(feature_set, task, cache.hidden_size, own_seed, timeout)
        optimizer = AdamW(list(model.parameters()), config.learning_rate, config.weight_decay)
        order = torch.Generator().manual_seed(seed)
        dropout = torch.Generator().manual_seed(own_seed)
        # Python floats compare in float64: the stopping rule's losses are float64 here.
        stopping = EarlyStopping(1, config.patience, dtype=torch.float64)
        only = torch.zeros(1, dtype=torch.long)
        best_state = None
        for epoch in range(1, config.max_epochs + 1):
            model.train()
            perm = torch.randperm(len(train), generator=order).numpy()
            for start in range(0, len(train), config.batch_size):
                rows = train[perm[start : start + config.batch_size]]
                loss = F.cross_entropy(states.logits(model, rows, dropout),
                                       y_all[rows].to(device))
                model.zero_grad()
                loss.backward()
                optimizer.step()
            if task.final:  # a fixed number of epochs: nothing to stop on
                continue
            val_loss = float(F.cross_entropy(states.predict(model, val), y_all[val].to(device)))
            if stopping.update(only, torch.tensor([val_loss], dtype=torch.float64), epoch)[0]:
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if not stopping.going(only)[0]:
                break
        yield states.trained(model, seed, stopping, best_state)


def _new_model(feature_set, task: HeadTask, hidden_size: int, own_seed: int, timeout):
    """A fresh ``pooler.module(H)`` and its ``nn.Linear`` head, seeded by ``own_seed``
    (the caller's RNG untouched), on the task's device."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(own_seed)
        with plugin_code(timeout):
            module = feature_set.pooler.module(hidden_size)
        head = torch.nn.Linear(feature_set.dim, task.num_labels)
        with torch.no_grad():
            head.weight.normal_(0.0, 0.02)
            head.bias.zero_()
    return torch.nn.ModuleDict({"pooler": module, "head": head}).to(task.device)


#: Token states a trainable pooler's training holds in memory as float32, standardized
#: (its layers together); above, every batch is read from the cache file.
IN_MEMORY_BYTES = 2 << 30


class _TokenInputs:
    """A trainable pooler's inputs read from the token cache (standardized per layer with
    the fold's train statistics), and its model's outputs on them.

    Where its layers fit :data:`IN_MEMORY_BYTES` as float32, they are read and
    standardized once per fold, and each batch is copied from memory: the same tensors
    as the cache's :meth:`~poolkit.encoding.cache.HiddenStateCache.gather`, without its
    file reads, float conversions and standardization on every batch of every epoch."""

    def __init__(self, cache, feature_set, task: HeadTask, timeout, moments: dict,
                 spare: list):
        import torch

        self.cache, self.feature_set, self.task, self.timeout = cache, feature_set, task, timeout
        hidden_size = cache.hidden_size
        self.standardize = {
            layer: token_standardization(cache, task.train, layer, moments)
            if task.config.standardize
            else Standardization(torch.zeros(hidden_size), torch.ones(hidden_size))
            for layer in feature_set.layers
        }
        fits = 4 * hidden_size * int(cache.lengths.sum()) * len(feature_set.layers) \
            <= IN_MEMORY_BYTES
        self.blocks = None
        if fits:
            reuse = list(spare)  # ``spare``'s memory, instead of fresh pages every fold
            self.blocks = {layer: cache.in_memory(layer, scale, reuse.pop() if reuse else None)
                           for layer, scale in self.standardize.items()}
            spare[:] = self.blocks.values()

    def inputs(self, rows) -> tuple:
        """The pooler's arguments for texts ``rows``: hidden, mask (and segments)."""
        device, feature_set = self.task.device, self.feature_set
        parts, mask = [], None
        for layer in feature_set.layers:
            if self.blocks is not None:  # each batch is done with before the next is read
                hidden, mask = self.blocks[layer].gather(rows, reuse=True)
            else:
                hidden, mask = self.cache.gather(rows, layer, self.standardize[layer])
            parts.append(hidden.to(device))
        mask = mask.to(device)
        pair = (self.cache.segments(rows).to(device),) if feature_set.segments else ()
        return ((tuple(parts) if feature_set.combines else parts[0]), mask, *pair)

    def logits(self, model, rows, dropout):
        """Training logits of ``rows``, dropout (drawn from ``dropout``) on the pooled."""
        import torch

        config = self.task.config
        with plugin_code(self.timeout):
            pooled = model["pooler"](*self.inputs(rows))
        pooled = pooled.float()
        if config.dropout > 0:
            keep = torch.rand(pooled.shape, generator=dropout) >= config.dropout
            pooled = pooled * keep.to(self.task.device) / (1 - config.dropout)
        return model["head"](pooled)

    def predict(self, model, rows):
        import torch

        model.eval()
        out = []
        with torch.no_grad():
            # Training-sized batches: larger ones got fresh pages from the OS on
            # every call, a large share of a training run's time.
            size = self.task.config.batch_size
            for start in range(0, len(rows), size):
                args = self.inputs(rows[start : start + size])
                with plugin_code(self.timeout):
                    pooled = model["pooler"](*args)
                out.append(model["head"](pooled.float()))
        return torch.cat(out)

    def trained(self, model, seed: int, stopping, best_state) -> TrainedHead:
        """The seed's head: the best state's test probabilities (a final head: the last
        weights, with the token states' standardization)."""
        import torch

        task, weights = self.task, None
        if task.final:
            stopping.best_epoch[:] = stopping.epochs[:] = task.config.max_epochs
            weights = {name: value.detach().cpu().clone()
                       for name, value in model.state_dict().items()}
            for layer, scale in self.standardize.items():
                weights[f"shift.{layer}"] = torch.as_tensor(scale.shift).float()
                weights[f"scale.{layer}"] = torch.as_tensor(scale.scale).float()
        else:
            model.load_state_dict(best_state)
        probs = torch.softmax(self.predict(model, task.test).double(), dim=-1).cpu().numpy()
        return TrainedHead(self.feature_set.id, seed, probs, int(stopping.best_epoch[0]),
                           int(stopping.epochs[0]), float(stopping.best_loss[0]),
                           fold=task.fold, weights=weights)


#: Per-text token sums (16 bytes per text and dimension) kept for the whole run while they
#: fit; above, each fold's statistics are read from the cache on their own.
MOMENTS_BYTES = 1 << 30


def token_standardization(cache, rows, layer, moments: dict, chunk: int = 1024):
    """Per-dimension mean and std (a :class:`~poolkit.heads.base.Standardization`) of the
    real-token states of texts ``rows`` at ``layer``: from the layer's per-text sums
    (:meth:`~poolkit.encoding.cache.HiddenStateCache.text_moments`, read once into
    ``moments`` and kept for every fold) while they fit :data:`MOMENTS_BYTES`, else read
    for these texts, ``chunk`` texts at a time."""
    import torch

    if 16 * len(cache) * cache.hidden_size <= MOMENTS_BYTES:
        if layer not in moments:
            moments[layer] = cache.text_moments(layer)
        sums, squares = moments[layer]
        return Standardization.of_sums(sums[rows].sum(axis=0), squares[rows].sum(axis=0),
                                       int(cache.lengths[rows].sum()))
    states = cache.states(layer)
    total = torch.zeros(cache.hidden_size, dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(rows), chunk):
        part = torch.from_numpy(states[cache.token_rows(rows[start : start + chunk])]).double()
        total += part.sum(dim=0)
        squares += (part * part).sum(dim=0)
    return Standardization.of_sums(total, squares, int(cache.lengths[rows].sum()))
