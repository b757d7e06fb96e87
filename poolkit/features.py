"""Running poolers over the cached token states: one pass over the cache for all."""

import numpy as np


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
            failures[name] = _reason(exc)
    return failures


def pool_cache(cache, poolers: dict, max_batch_tokens: int = 16384, progress: bool = False):
    """Pool every text of ``cache`` with every pooler in one pass over the cache.

    Returns ``(features, failures)``: ``features[name]`` is float32
    ``(len(cache), D)`` in input order; ``failures[name]`` is the reason a
    pooler was dropped (it raised, or broke the shape/dtype/finite contract).
    """
    import torch
    from tqdm.auto import tqdm

    hidden_size = cache.hidden_size
    dims = {name: int(p.output_dim(hidden_size)) for name, p in poolers.items()}
    features = {name: np.empty((len(cache), dims[name]), dtype=np.float32) for name in poolers}
    failures = {}
    total = int(cache.lengths.sum())
    with tqdm(total=total, unit="tok", unit_scale=True, desc="pooling",
              disable=not progress, leave=False) as bar:
        for indices in cache.batches(max_batch_tokens):
            hidden, mask = cache.padded(indices)
            for name, pooler in poolers.items():
                if name in failures:
                    continue
                versions = hidden._version, mask._version
                try:
                    with torch.no_grad():
                        out = pooler.pool(hidden, mask)
                    if (hidden._version, mask._version) != versions:
                        raise ValueError("wrote in place into its input tensors, which are read-only")
                    features[name][indices] = check_output(out, len(indices), dims[name])
                except Exception as exc:
                    failures[name] = _reason(exc)
                    if (hidden._version, mask._version) != versions:
                        hidden, mask = cache.padded(indices)  # fresh inputs for the others
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


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

