"""Running poolers over the cached token states: one pass over the cache for all.

A *feature set* is one pooler applied to one layer (or, for a pooler that
combines layers, to its own layers): its id is ``pooler@layer``, e.g.
``mean@6`` or ``first_last_avg@1+6``. Results carry the pooler and the layer.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FeatureSet:
    pooler_name: str
    pooler: object
    #: an absolute hidden-state index, or a tuple of them for multi-layer poolers
    source: int | tuple

    @property
    def layer(self) -> str:
        """``"6"``, or ``"1+6"`` for a pooler combining layers."""
        if isinstance(self.source, tuple):
            return "+".join(str(x) for x in self.source)
        return str(self.source)

    @property
    def id(self) -> str:
        return f"{self.pooler_name}@{self.layer}"

    @property
    def layers(self) -> tuple:
        return self.source if isinstance(self.source, tuple) else (self.source,)


def feature_sets(poolers: dict, layers, num_layers: int) -> dict:
    """``{id: FeatureSet}``: single-layer poolers on each of ``layers`` (absolute
    indices), poolers with their own ``layers`` on those, in pooler order.

    A pooler whose declared layers do not exist in this model raises
    :class:`PoolkitError` naming it.
    """
    from .encoder import parse_layers
    from .errors import PoolkitError

    sets = {}
    for name, pooler in poolers.items():
        own = getattr(pooler, "layers", None)
        if own is None:
            sources = list(layers)
        else:
            try:
                sources = [tuple(parse_layers([x], num_layers)[0] for x in own)]
            except (PoolkitError, TypeError) as exc:
                raise PoolkitError(f"pooler '{name}' asks for layers {own!r}: {exc}") from None
        for source in sources:
            fs = FeatureSet(name, pooler, source)
            sets[fs.id] = fs
    return sets


def setup_poolers(poolers: dict, encoder) -> dict:
    """Call each pooler's ``setup`` with the encoder; returns ``{name: reason}`` failures."""
    failures = {}
    for name, pooler in poolers.items():
        try:
            pooler.setup(encoder)
            dim = pooler.output_dim(encoder.hidden_size)
            if not isinstance(dim, (int, np.integer)) or dim <= 0:
                raise ValueError(f"output_dim() returned {dim!r}, not a positive int")
        except Exception as exc:
            failures[name] = one_line_reason(exc)
    return failures


def pool_cache(cache, sets: dict, max_batch_tokens: int = 4096, progress: bool = False):
    """Pool every text of ``cache`` with every feature set in one pass over the cache.

    ``sets`` maps ids to :class:`FeatureSet` (or to a fixed pooler, run on the
    highest cached layer). Returns ``(features, failures)``: ``features[id]``
    is float32 ``(len(cache), D)`` in input order; ``failures[id]`` is the
    reason a feature set was dropped (its pooler raised, or broke the
    shape/dtype/finite contract). Batches of ``max_batch_tokens`` padded
    positions (~6 MiB of fp32 states at hidden size 384) stay in the CPU's
    caches while every pooler reads them: 4,096 pooled 25-30% faster than
    16,384 on the default data.
    """
    import torch
    from tqdm.auto import tqdm

    sets = {key: fs if isinstance(fs, FeatureSet) else FeatureSet(key, fs, cache.layers[-1])
            for key, fs in sets.items()}
    hidden_size = cache.hidden_size
    dims = {key: int(fs.pooler.output_dim(hidden_size)) for key, fs in sets.items()}
    features = {key: np.empty((len(cache), dims[key]), dtype=np.float32) for key in sets}
    failures = {}
    total = int(cache.lengths.sum())
    with tqdm(total=total, unit="tok", unit_scale=True, desc="pooling",
              disable=not progress, leave=False) as bar:
        for indices in cache.batches(max_batch_tokens):
            states = {}  # layer -> (hidden, mask), read once per batch
            for key, fs in sets.items():
                if key in failures:
                    continue
                for layer in fs.layers:
                    if layer not in states:
                        states[layer] = cache.padded(indices, layer)
                inputs = [states[layer][0] for layer in fs.layers]
                mask = states[fs.layers[0]][1]
                hidden = tuple(inputs) if isinstance(fs.source, tuple) else inputs[0]
                versions = [t._version for t in (*inputs, mask)]
                try:
                    with torch.no_grad():
                        out = fs.pooler.pool(hidden, mask)
                    if [t._version for t in (*inputs, mask)] != versions:
                        raise ValueError("wrote in place into its input tensors, which are read-only")
                    features[key][indices] = check_output(out, len(indices), dims[key])
                except Exception as exc:
                    failures[key] = one_line_reason(exc)
                    if [t._version for t in (*inputs, mask)] != versions:
                        states = {}  # fresh inputs for the others
            bar.update(int(cache.lengths[indices].sum()))
    for name in failures:
        features.pop(name, None)
    return features, failures


def check_output(out, batch: int, dim: int) -> np.ndarray:
    """``out`` as float32 numpy after checking the pooler contract."""
    import torch

    if not isinstance(out, torch.Tensor):
        raise ValueError(f"returned {type(out).__name__}, not a torch.Tensor")
    if not out.is_floating_point():
        raise ValueError(f"returned dtype {out.dtype}, not a float dtype")
    if tuple(out.shape) != (batch, dim):
        raise ValueError(f"returned shape {tuple(out.shape)}, expected ({batch}, {dim})")
    array = out.detach().float().cpu().numpy()
    if not np.isfinite(array).all():
        raise ValueError("returned NaN or inf")
    return array


def one_line_reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

