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

    def wants(self, feature_set) -> bool:
        return feature_set.trainable and not feature_set.finetuned

    def train(self, task: HeadTask, jobs: list):
        for feature_set, seeds in jobs:
            fold = f", fold {task.fold + 1} of {task.folds}" if task.folds > 1 else ""
            self.log(f"training pooler '{feature_set.pooler_name}' (layer {feature_set.layer}"
                     f"{fold}) with its heads")
            heads = train_trainable(self.cache, feature_set, task, seeds, self.timeout)
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


def train_trainable(cache, feature_set, task: HeadTask, seeds, timeout=DEFAULT_TIMEOUT):
    """Train ``feature_set``'s trainable pooler jointly with its head, per seed; yield
    each seed's :class:`~poolkit.heads.base.TrainedHead` as it finishes.

    With ``task.config.standardize`` the token states are standardized per
    dimension with train-split statistics (the token-level counterpart of the
    fixed features' standardization).
    """
    import torch
    import torch.nn.functional as F

    config, device = task.config, task.device
    train, val, test = task.train, task.validation, task.test
    hidden_size = cache.hidden_size
    standardize = {
        layer: token_standardization(cache, train, layer) if config.standardize
        else Standardization(torch.zeros(hidden_size), torch.ones(hidden_size))
        for layer in feature_set.layers
    }
    y_all = torch.from_numpy(task.labels)

    if feature_set.segments and cache.pair_starts is None:
        raise PluginFailure(NEEDS_PAIRS)

    def inputs(rows):
        """The pooler's arguments for texts ``rows``: hidden, mask (and segments)."""
        parts, mask = [], None
        for layer in feature_set.layers:
            hidden, mask = cache.gather(rows, layer, standardize[layer])
            parts.append(hidden.to(device))
        mask = mask.to(device)
        pair = (cache.segments(rows).to(device),) if feature_set.segments else ()
        return ((tuple(parts) if feature_set.combines else parts[0]), mask, *pair)

    def predict(model, rows):
        model.eval()
        out = []
        with torch.no_grad():
            # Training-sized batches: larger ones got fresh pages from the OS on
            # every call, a large share of a training run's time.
            for start in range(0, len(rows), config.batch_size):
                args = inputs(rows[start : start + config.batch_size])
                with plugin_code(timeout):
                    pooled = model["pooler"](*args)
                out.append(model["head"](pooled.float()))
        return torch.cat(out)

    for seed in seeds:
        own_seed = head_seed(seed, feature_set.id)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(own_seed)
            with plugin_code(timeout):
                module = feature_set.pooler.module(hidden_size)
            head = torch.nn.Linear(feature_set.dim, task.num_labels)
            with torch.no_grad():
                head.weight.normal_(0.0, 0.02)
                head.bias.zero_()
        model = torch.nn.ModuleDict({"pooler": module, "head": head}).to(device)
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
                args = inputs(rows)
                with plugin_code(timeout):
                    pooled = model["pooler"](*args)
                pooled = pooled.float()
                if config.dropout > 0:
                    keep = torch.rand(pooled.shape, generator=dropout) >= config.dropout
                    pooled = pooled * keep.to(device) / (1 - config.dropout)
                loss = F.cross_entropy(model["head"](pooled), y_all[rows].to(device))
                model.zero_grad()
                loss.backward()
                optimizer.step()
            if task.final:  # a fixed number of epochs: nothing to stop on
                continue
            val_loss = float(F.cross_entropy(predict(model, val), y_all[val].to(device)))
            if stopping.update(only, torch.tensor([val_loss], dtype=torch.float64), epoch)[0]:
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if not stopping.going(only)[0]:
                break
        weights = None
        if task.final:  # the last weights, and the token states' standardization
            stopping.best_epoch[:] = stopping.epochs[:] = config.max_epochs
            weights = {name: value.detach().cpu().clone()
                       for name, value in model.state_dict().items()}
            for layer, scale in standardize.items():
                weights[f"shift.{layer}"] = torch.as_tensor(scale.shift).float()
                weights[f"scale.{layer}"] = torch.as_tensor(scale.scale).float()
        else:
            model.load_state_dict(best_state)
        probs = torch.softmax(predict(model, test).double(), dim=-1).cpu().numpy()
        yield TrainedHead(feature_set.id, seed, probs, int(stopping.best_epoch[0]),
                          int(stopping.epochs[0]), float(stopping.best_loss[0]), fold=task.fold,
                          weights=weights)


def token_standardization(cache, rows, layer, chunk: int = 1024) -> Standardization:
    """Per-dimension mean and std of the real-token states of texts ``rows`` at ``layer``,
    read straight from the cache (no padding to add and take off)."""
    states = cache.states(layer)
    chunks = (states[cache.token_rows(rows[start : start + chunk])]
              for start in range(0, len(rows), chunk))
    return Standardization.of_token_chunks(chunks, cache.hidden_size)
