"""Running poolers over the cached token states: one pass over the cache for all.

A *feature set* is one pooler applied to one layer (or, for a pooler that
combines layers, to its own layers): its id is ``pooler@layer``, e.g.
``mean@6`` or ``first_last_avg@1+6``. Results carry the pooler and the layer.

Every call into a pooler runs under :class:`~poolkit.pooling.isolation.plugin_code`,
and a batch's states are checksummed before and after each plugin's pooler
(the shipped ones excepted) reads them: a pooler that raises, exits, hangs,
writes into its inputs (even through ``.data`` or ``.numpy()``, which the
version counters miss) or changes torch's global settings fails alone, and
the others get fresh states.
"""

from dataclasses import dataclass

import numpy as np

from poolkit.encoding.cache import pad_tokens
from poolkit.encoding.layers import parse_layers
from poolkit.errors import NEEDS_PAIRS, PluginFailure, PoolkitError, one_line
from poolkit.pooling.isolation import DEFAULT_TIMEOUT, plugin_code
from poolkit.pooling.manager import DEFAULT_PLUGINS as BUILTIN_PLUGINS


@dataclass(frozen=True)
class FeatureSet:
    """One pooler on one layer, or on its own layers when it combines several."""

    pooler_name: str
    pooler: object
    #: absolute hidden-state indices (one, unless the pooler combines layers)
    layers: tuple
    #: the pooler declared its layers: its ``pool`` gets ``hidden`` as a tuple of them
    combines: bool = False
    #: the pooled width, ``pooler.output_dim(hidden_size)`` (asked once, in :func:`setup_poolers`)
    dim: int = 0
    trainable: bool = False
    #: trained end to end with the encoder (``--finetune``), not on the cached states
    finetuned: bool = False
    #: the encoder's label when a run compares several (``--model a,b``), else ``None``
    model: str | None = None
    #: the pooler pools pairs of texts: its ``pool`` gets their segment ids too
    segments: bool = False

    @property
    def layer(self) -> str:
        """The layers as results show them: ``"6"``, or ``"1+6"``."""
        return "+".join(str(x) for x in self.layers)

    @property
    def encoder(self) -> str:
        """``"finetuned"`` or ``"frozen"``, as results show it."""
        return "finetuned" if self.finetuned else "frozen"

    @property
    def id(self) -> str:
        return feature_id(self.pooler_name, self.layer, self.encoder, self.model)


def feature_id(pooler: str, layer, encoder: str = "frozen", model=None) -> str:
    """A feature set's id from its results columns: ``mean@6``, ``mean@6-ft`` when
    the encoder was fine-tuned with the pooler, ``minilm:mean@6`` when a run
    compares several models."""
    prefix = f"{model}:" if isinstance(model, str) and model else ""
    return f"{prefix}{pooler}@{layer}" + ("-ft" if encoder == "finetuned" else "")


def finetuned_sets(sets: dict, failures: dict, num_layers: int) -> tuple:
    """``(sets, failures)`` of ``--finetune``: per pooler of ``sets``, one feature set
    fine-tuned with the encoder, pooling the last layer (or the layers a combining
    pooler declares); a pooler that failed already fails here too."""
    from dataclasses import replace

    tuned, failed = {}, {}
    for key, fs in sets.items():
        one = replace(fs, layers=fs.layers if fs.combines else (num_layers,), finetuned=True)
        tuned.setdefault(one.id, one)
        if key in failures:
            failed.setdefault(one.id, failures[key])
    return tuned, failed


@dataclass(frozen=True)
class PoolerSpec:
    """What poolkit reads from a pooler, once, under isolation."""

    layers: tuple | None
    trainable: bool
    dim: int
    segments: bool = False


def setup_poolers(poolers: dict, encoder, num_texts: int = 0, timeout=DEFAULT_TIMEOUT):
    """Set up each pooler and read what poolkit needs from it, once.

    Calls ``setup(encoder)``, then :func:`read_spec`, under isolation. Returns
    ``(specs, failures)``: ``{name: PoolerSpec}`` and ``{name: one-line reason}``.
    """
    specs, failures = {}, {}
    for name, pooler in poolers.items():
        try:
            with plugin_code(timeout):
                pooler.setup(encoder)
            specs[name] = read_spec(pooler, encoder.hidden_size, num_texts, timeout)
        except PluginFailure as exc:
            failures[name] = exc.reason
    return specs, failures


def read_spec(pooler, hidden_size: int, num_texts: int = 0, timeout=DEFAULT_TIMEOUT) -> PoolerSpec:
    """``output_dim(hidden_size)``, ``layers`` and ``trainable`` of a set-up pooler,
    read once under isolation; raises :class:`PluginFailure`. A width whose
    features for ``num_texts`` texts would not fit in memory is a failure."""
    with plugin_code(timeout):
        dim = pooler.output_dim(hidden_size)
        layers = getattr(pooler, "layers", None)
        trainable = bool(getattr(pooler, "trainable", False))
        segments = getattr(pooler, "segments", False) is True
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
        raise PluginFailure(f"output_dim() returned {dim!r}, not a positive int")
    _check_fits(int(dim), num_texts)
    return PoolerSpec(layers, trainable, int(dim), segments)


def _check_fits(dim: int, num_texts: int) -> None:
    """Refuse a width whose float32 features would take more than half the free memory."""
    need = 4 * dim * max(num_texts, 1)
    free = available_memory()
    if free is not None and need > free // 2:
        raise PluginFailure(f"output_dim() returned {dim}: {num_texts} texts' features would take "
                            f"{need / 2**30:.1f} GiB, more than half the {free / 2**30:.1f} GiB "
                            "of free memory")


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``), or ``None``."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def feature_sets(poolers: dict, specs: dict, layers, num_layers: int, failed=None):
    """``(sets, failures)`` in pooler order.

    ``sets`` is ``{id: FeatureSet}``: single-layer poolers on each of
    ``layers`` (absolute indices), poolers with their own ``layers`` on those.
    ``failures`` is ``{id: reason}`` for the poolers in ``failed`` (``{name:
    reason}``, e.g. from :func:`setup_poolers`; one id per selected layer) and
    for a pooler whose declared layers this model does not have (its failure
    alone); their feature sets are in ``sets`` too, to name them.
    """
    failed = failed or {}
    sets, failures = {}, {}
    for name, pooler in poolers.items():
        if name in failed:
            for layer in layers:
                fs = FeatureSet(name, pooler, (layer,))
                sets[fs.id], failures[fs.id] = fs, failed[name]
            continue
        spec = specs[name]
        own = spec.layers
        if own is None:
            for layer in layers:
                fs = FeatureSet(name, pooler, (layer,), False, spec.dim, spec.trainable,
                                segments=spec.segments)
                sets[fs.id] = fs
            continue
        try:
            if not isinstance(own, (tuple, list)) or not own:
                raise TypeError("not a non-empty tuple of layer indices")
            combined = tuple(parse_layers([x], num_layers)[0] for x in own)
        except (PoolkitError, TypeError) as exc:
            fs = FeatureSet(name, pooler, tuple(own) if isinstance(own, (tuple, list)) else (own,),
                            combines=True)
            sets[fs.id] = fs
            failures[fs.id] = f"asks for layers {own!r}: {one_line(exc)}"
            continue
        fs = FeatureSet(name, pooler, combined, True, spec.dim, spec.trainable,
                        segments=spec.segments)
        sets[fs.id] = fs
    return sets, failures


def pool_cache(cache, sets: dict, max_batch_tokens: int = 4096, progress: bool = False,
               timeout=DEFAULT_TIMEOUT):
    """Pool every text of ``cache`` with every feature set in one pass over the cache.

    ``sets`` maps ids to :class:`FeatureSet` (or to a fixed pooler, run on the
    highest cached layer). Returns ``(features, failures)``: ``features[id]``
    is float32 ``(len(cache), D)`` in input order; ``failures[id]`` is the
    reason a feature set was dropped (its pooler raised, hung past
    ``timeout`` seconds in one call, or broke the shape/dtype/finite or
    read-only contract). Batches of ``max_batch_tokens`` padded positions
    (~6 MiB of fp32 states at hidden size 384) stay in the CPU's caches while
    every pooler reads them.
    """
    from tqdm.auto import tqdm

    sets = dict(sets)
    failures = {}
    for key, fs in list(sets.items()):
        if not isinstance(fs, FeatureSet):  # a pooler, already set up
            try:
                spec = read_spec(fs, cache.hidden_size, len(cache), timeout)
            except PluginFailure as exc:
                failures[key] = exc.reason
                del sets[key]
                continue
            sets[key] = FeatureSet(key, fs, (cache.layers[-1],), dim=spec.dim,
                                   segments=spec.segments)
    features = {}
    for key, fs in sets.items():
        try:
            features[key] = np.empty((len(cache), fs.dim), dtype=np.float32)
        except MemoryError:
            failures[key] = f"output_dim() returned {fs.dim}: no memory for its features"
    checked = _checked(sets)
    total = int(cache.lengths.sum())
    with tqdm(total=total, unit="tok", unit_scale=True, desc="pooling",
              disable=not progress, leave=False) as bar:
        for indices in cache.batches(max_batch_tokens):
            pooled = pool_batch(sets, lambda layer: cache.padded(indices, layer), len(indices),
                                failures, checked, timeout, cache.segments(indices))
            for key, array in pooled.items():
                features[key][indices] = array
            bar.update(int(cache.lengths[indices].sum()))
    for name in failures:
        features.pop(name, None)
    return features, failures


def _checked(sets: dict) -> set:
    """The feature sets whose pooler's reads are checked for writes: the shipped
    plugins are poolkit's own code, held to the contract by its tests; only other
    plugins' writes are checked for (a read of the batch after each call)."""
    return {key for key, fs in sets.items() if type(fs.pooler).__module__ not in BUILTIN_PLUGINS}


def pool_batch(sets: dict, load, size: int, failures: dict, checked: set,
               timeout=DEFAULT_TIMEOUT, segments=None) -> dict:
    """Every feature set of ``sets`` not in ``failures`` on one batch of ``size`` texts:
    ``{id: (size, D) float32}``. ``load(layer)`` gives the batch's ``(hidden, mask)``
    of a layer (called once per layer, and again after a pooler wrote into them);
    ``segments`` the batch's segment ids when its items are pairs of texts (a copy
    goes to each pooler that asks for them, ``pool(hidden, mask, segments)``); a
    feature set that fails goes into ``failures`` with its reason."""
    import torch

    out = {}
    states, sums = {}, {}  # layer -> (hidden, mask), its checksum: once per batch
    for key, fs in sets.items():
        if key in failures:
            continue
        if fs.segments and segments is None:
            failures[key] = NEEDS_PAIRS
            continue
        for layer in fs.layers:
            if layer not in states:
                states[layer] = load(layer)
        if key in checked:
            before = [sums.setdefault(layer, _checksum(*states[layer])) for layer in fs.layers]
        inputs = [states[layer][0] for layer in fs.layers]
        mask = states[fs.layers[0]][1]
        hidden = tuple(inputs) if fs.combines else inputs[0]
        versions = [t._version for t in (*inputs, mask)]
        extra = (segments.clone(),) if fs.segments else ()
        try:
            with plugin_code(timeout), torch.no_grad():
                result = fs.pooler.pool(hidden, mask, *extra)
            out[key] = check_output(result, size, fs.dim)
        except PluginFailure as exc:
            failures[key] = exc.reason
        except ValueError as exc:
            failures[key] = str(exc)
        # The version counters catch in-place ops; the checksums also catch
        # writes through .data or .numpy(), which leave the counters alone.
        if [t._version for t in (*inputs, mask)] != versions or key in checked and \
                [_checksum(*states[layer]) for layer in fs.layers] != before:
            failures[key] = ("wrote into its input tensors (in place, or through .data "
                             "or .numpy()), which are read-only")
            states, sums = {}, {}  # fresh inputs for the others
    for key in failures:
        out.pop(key, None)
    return out


class BatchPooling:
    """Pools each encoder batch's token states while encoding (``--cache-mode pooled``):
    called with a batch's real-token ``lengths`` and ``states`` ``(layers, tokens, H)``
    (rounded to the cache's dtype, as a token cache would hold them), and for pairs of
    texts their ``segments``, it returns one
    ``(texts, D)`` block per feature set of ``sets``, zeros for a set in ``failed``
    (which it adds to)."""

    def __init__(self, sets: dict, layers, failed: dict, timeout=DEFAULT_TIMEOUT):
        self.sets, self.layers, self.failed, self.timeout = sets, list(layers), failed, timeout
        self.checked = _checked(sets)

    def __call__(self, lengths, states, segments=None) -> list:
        import torch

        def load(layer):
            return pad_tokens(torch.from_numpy(states[self.layers.index(layer)]).float(), lengths)

        # (the encoder's loop runs in inference mode, whose tensors have no version
        # counter: the read-only check needs one)
        with torch.inference_mode(False):
            out = pool_batch(self.sets, load, len(lengths), self.failed, self.checked,
                             self.timeout, segments)
        return [out.get(key, np.zeros((len(lengths), fs.dim), dtype=np.float32))
                for key, fs in self.sets.items()]


def _checksum(*tensors) -> tuple:
    """Wrapping sums of the tensors' 8-byte words (and any odd bytes at the end): a
    change to any value changes them. One read of the batch, far cheaper than a copy."""
    import torch

    sums = []
    for tensor in tensors:
        raw = tensor.detach().reshape(-1).view(torch.uint8)
        whole = raw.numel() // 8 * 8
        sums.append((int(raw[:whole].view(torch.int64).sum()), raw[whole:].tolist()))
    return tuple(sums)


def check_output(out, batch: int, dim: int) -> np.ndarray:
    """``out`` as float32 numpy after checking the pooler contract (``ValueError`` if broken)."""
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
