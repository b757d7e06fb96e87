"""Running the encoder once over a dataset into the hidden-state cache."""

import errno
import os
import shutil
import time
from pathlib import Path

import numpy as np

from poolkit.encoding import distributed
from poolkit.encoding.batching import plan_batches
from poolkit.encoding.cache import (
    CacheDamaged,
    CacheWriter,
    PooledWriter,
    entry_name,
    find_entry,
    find_pooled_entry,
    free_disk,
    open_entry,
    parse_budget,
    pooled_name,
    token_cache_bytes,
)
from poolkit.encoding.tokenization import is_pairs, segments, tokenize
from poolkit.errors import ModelFailed, PoolkitError, one_line
from poolkit.identity import RunIdentity, pooler_fingerprint

#: Batches between progress records of an encoding (what a resume restarts from).
CHECKPOINT_EVERY = 16
#: Seconds between progress lines of an encoding when there is no progress bar
#: (stderr is not a terminal: a batch job's log, CI).
PROGRESS_EVERY = 10.0
PRECISIONS = ("bf16", "fp16", "fp32")
#: ``--cache-mode``: what a cache entry stores (see :func:`encode_to_cache`)
CACHE_MODES = ("auto", "tokens", "pooled")
#: ``--cache-budget`` by default: this share of the cache folder's free disk
DEFAULT_BUDGET = 0.5


def pick_device(device=None) -> str:
    """``device`` if given (checked: it must exist here), else CUDA when available, else CPU."""
    import torch

    if not device:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(str(device))
    except (RuntimeError, ValueError):
        raise PoolkitError(f"--device '{device}' is not a device; use cpu, cuda or cuda:N"
                           ) from None
    if parsed.type == "cpu":
        return str(device)
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise PoolkitError(f"--device {device}: no CUDA GPU is available here; use "
                               "--device cpu or leave --device out")
        if parsed.index is not None and parsed.index >= count:
            raise PoolkitError(f"--device {device}: this machine has {count} CUDA GPU(s), "
                               f"cuda:0 to cuda:{count - 1}")
        return str(device)
    backend = getattr(torch, parsed.type, None)
    if backend is None or not getattr(backend, "is_available", lambda: False)():
        raise PoolkitError(f"--device {device}: no {parsed.type} device is available here; use "
                           "--device cpu or leave --device out")
    return str(device)


def default_batch_tokens(device: str, hidden_size: int = 384) -> int:
    """Padded tokens per encoder batch.

    On a CPU, batches of about 1k tokens keep each layer's activations in the
    caches (see benchmarks/results/encode-cpu.md); a GPU wants large batches to
    fill its cores: 65,536 tokens up to 1,024 wide, fewer for wider models (a
    4,096-wide 7-8 B decoder: 16,384), so a batch's activations and the states
    it returns stay a few GB whatever the width.
    """
    if not device.startswith("cuda"):
        return 1024
    return 65536 * 1024 // max(1024, hidden_size)


def encode_to_cache(encoder, texts, cache_dir, *, device: str = "cpu", dtype: str = "fp16",
                    precision: str = "bf16", max_batch_tokens=None, max_texts=None,
                    progress: bool = False, layers=None, before_encoding=None,
                    log=lambda message: None, mode: str = "tokens", pool=None, budget=None,
                    make_pooling=None) -> tuple:
    """The cache entry ``(cache, ran)`` for ``texts`` under ``encoder`` (an
    :class:`~poolkit.encoding.model.Encoder`); the encoder runs (``ran``) only on a miss.

    ``layers``: the hidden-state indices to cache (absolute; default the last layer); an
    entry holding more is reused. ``dtype``: the cache's storage precision; ``precision``:
    the encoder's on CUDA (autocast; ``fp32`` turns it off); on a CPU always fp32 (bf16 and
    fp16 matmuls are far slower there). ``mode`` (``--cache-mode``): ``tokens`` keeps every
    real token's states; ``pooled`` only the features of the feature sets ``pool``
    (``{id: FeatureSet}``, set up), pooled batch by batch by ``make_pooling(sets, layers,
    failed)`` (a :class:`~poolkit.pooling.features.BatchPooling`) from states rounded to
    ``dtype``; ``auto`` reuses a complete entry of either kind, else keeps tokens unless
    they would take more than ``budget`` (``--cache-budget``, default
    :data:`DEFAULT_BUDGET` of the free disk). Under torchrun every rank calls this alike:
    rank 0 opens the partial entry, the others join it, each encodes every
    ``world_size``-th missing batch, and rank 0 checks the others' batches (CRC-32),
    finishes the entry and returns it; the other ranks return ``(None, ran)``.
    """
    if precision not in PRECISIONS:
        raise PoolkitError(f"unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}")
    if mode not in CACHE_MODES:
        raise PoolkitError(f"--cache-mode {mode}: use one of {', '.join(CACHE_MODES)}")
    compute = precision if device.startswith("cuda") else "fp32"
    key, identity = RunIdentity.entry_key(encoder.identity(), texts, compute, dtype)
    layers = sorted({int(x) for x in layers}) if layers else [encoder.num_layers]
    _check_shared(cache_dir)
    pool = dict(sorted((pool or {}).items())) if mode != "tokens" else None  # in id order
    wanted = {k: pooler_fingerprint(fs.pooler) for k, fs in pool.items()} if pool is not None \
        else None
    cache = _cached(cache_dir, key, layers, mode, wanted, log)
    if cache is not None:
        _say_truncated(int(cache.meta.get("truncated", 0)), texts, encoder, log)
        return cache, False
    # A miss: check and load the model first, then let the caller prepare
    # (e.g. create its run directory) only once the model is known to load.
    encoder.validate()
    model = encoder.encoding_model(device, all_layers=layers != [encoder.num_layers])
    _check_writable(cache_dir)
    if before_encoding is not None:
        before_encoding()
    ids, truncated = _tokenized(encoder, texts, log)
    plan = plan_batches(ids.lengths, max_batch_tokens
                        or default_batch_tokens(device, encoder.hidden_size), max_texts)
    mode = _choose_mode(mode, plan, encoder, layers, dtype, pool, budget, cache_dir, log)
    meta = {"identity": identity, "truncated": int(truncated),
            "attention": encoder.attention}
    if mode == "pooled":
        entry = _PooledEntry(cache_dir, pooled_name(key, wanted), meta, plan, pool, wanted,
                             dtype, encoder, layers, make_pooling)
    else:
        entry = _TokenEntry(cache_dir, entry_name(key, layers), meta, plan, encoder, dtype,
                            layers, ids.pair_starts)
    cache = _write_entry(entry, model, encoder, ids, plan, layers, device, compute, progress, log)
    return cache, True


def _check_shared(cache_dir) -> None:
    """Under torchrun, every rank must see the same cache folder."""
    if distributed.world_size() > 1:
        try:
            distributed.check_shared(cache_dir)
        except OSError as error:
            raise _cache_error(cache_dir, error) from None


def _cached(cache_dir, key, layers, mode, wanted, log):
    """The complete entry that serves this run (a token entry unless ``mode`` is pooled; a
    pooled one with every fingerprint in ``wanted`` unless it is tokens), or ``None``."""
    if mode != "pooled":
        cache = _reuse(cache_dir, lambda: find_entry(cache_dir, key, layers), log)
        if cache is not None:
            return cache
    if mode == "tokens":
        return None
    cache = _reuse(cache_dir, lambda: find_pooled_entry(cache_dir, key, wanted)[0], log)
    if cache is not None:
        return cache
    lacking = find_pooled_entry(cache_dir, key, wanted)[1]
    if lacking:
        shown = ", ".join(lacking[:6]) + (f" and {len(lacking) - 6} more"
                                         if len(lacking) > 6 else "")
        log(f"the pooled cache of these texts lacks {shown} (not pooled when it was "
            "built, or the plugin's code changed since): encoding again")
    return None


def _check_writable(cache_dir) -> None:
    try:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        probe = Path(cache_dir) / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise _cache_error(cache_dir, error) from None


def _tokenized(encoder, texts, log):
    """The texts' token ids and how many were cut, the cut said in a line."""
    ids, truncated = tokenize(encoder, texts)
    _say_truncated(truncated, texts, encoder, log)
    return ids, truncated


def _say_truncated(truncated: int, texts, encoder, log) -> None:
    """The warning that ``truncated`` of ``texts`` were cut at the encoder's length, said
    when they are encoded and again when their states come from the cache."""
    if truncated:
        what = ("pairs of texts are longer than {} tokens together and were truncated, "
                "longest first" if is_pairs(texts) else
                "texts are longer than {} tokens and were truncated").format(encoder.max_length)
        log(f"warning: {truncated} of {len(texts)} {what} (--max-length)")


def _choose_mode(mode, plan, encoder, layers, dtype, pool, budget, cache_dir, log) -> str:
    """``tokens`` or ``pooled``: ``auto`` chooses by the entries' sizes and the budget."""
    tokens = token_cache_bytes(plan.total_tokens, encoder.hidden_size, len(layers), dtype)
    pooled = 4 * len(plan.lengths) * sum(fs.dim for fs in pool.values()) if pool is not None \
        else None
    if mode == "auto":
        fraction, limit = parse_budget(budget if budget is not None else DEFAULT_BUDGET)
        if fraction is not None:
            limit = int(fraction * free_disk(cache_dir))
        mode = distributed.broadcast("tokens" if tokens <= limit else "pooled")
        share = f", {fraction:.0%} of the free disk" if fraction is not None else ""
        log(f"cache mode auto: {mode} (token cache {_size(tokens)}, pooled features "
            f"{_size(pooled)}; --cache-budget {_size(limit)}{share})")
    elif mode == "pooled":
        log(f"cache mode pooled: {len(pool)} feature sets' features, {_size(pooled)} "
            f"(the token cache would take {_size(tokens)})")
    return mode


class _TokenEntry:
    """A token entry to write: every real token's states of ``layers``."""

    def __init__(self, cache_dir, name, meta, plan, encoder, dtype, layers, pair_starts):
        self.cache_dir, self.name, self.meta, self.plan = cache_dir, name, meta, plan
        self.hidden_size, self.dtype, self.layers = encoder.hidden_size, dtype, layers
        self.pair_starts = pair_starts

    def open(self, join=None, rank=0):
        return CacheWriter(self.cache_dir, self.name, self.hidden_size, self.dtype, self.meta,
                           self.plan, self.layers, join=join, rank=rank,
                           pair_starts=self.pair_starts)

    def pooling(self, writer):
        return None


class _PooledEntry:
    """A pooled entry to write: one block of features per feature set of ``pool``."""

    def __init__(self, cache_dir, name, meta, plan, pool, wanted, dtype, encoder, layers,
                 make_pooling):
        self.cache_dir, self.name, self.plan, self.pool = cache_dir, name, plan, pool
        self.layers, self.make_pooling = layers, make_pooling
        self.meta = {**meta, "states_dtype": dtype, "hidden_size": encoder.hidden_size,
                     "layers": layers}
        self.described = [{"id": k, "pooler": fs.pooler_name, "layers": list(fs.layers),
                           "dim": fs.dim, "fingerprint": wanted[k]} for k, fs in pool.items()]

    def open(self, join=None, rank=0):
        return PooledWriter(self.cache_dir, self.name, self.meta, self.plan, self.described,
                            join=join, rank=rank)

    def pooling(self, writer):
        return self.make_pooling(self.pool, self.layers, writer.failed)


def _write_entry(entry, model, encoder, ids, plan, layers, device, compute, progress, log):
    """Encode the plan's missing batches into ``entry``: the finished cache (``None`` on a
    torchrun rank other than 0). A full disk frees what this entry took."""
    try:
        writer = _open_writer(entry)
        began = time.perf_counter()
        _encode_share(writer, entry.pooling(writer), model, encoder, ids, plan, layers,
                      device, compute, progress, log)
        return _finish(writer, plan, began)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            for partial in Path(entry.cache_dir).glob(f"{entry.name}.partial*"):
                shutil.rmtree(partial, ignore_errors=True)
        raise _cache_error(entry.cache_dir, error) from None


def _open_writer(entry):
    """Rank 0 opens the partial entry (or resumes it); the other ranks join it."""
    rank, ranks = distributed.rank(), distributed.world_size()
    writer = None
    if rank == 0:
        writer = entry.open()
        if ranks > 1:
            writer.checkpoint(sync=True)  # what the other ranks continue from
    shared = distributed.broadcast(str(writer.tmp) if writer is not None else None)
    if rank != 0:
        writer = entry.open(join=shared, rank=rank)
    return writer


def _encode_share(writer, pooling, model, encoder, ids, plan, layers, device, compute,
                  progress, log) -> None:
    """This rank's share of the missing batches, encoded into ``writer``; on any error
    what is done is kept (a checkpoint) and the error goes on."""
    rank, ranks = distributed.rank(), distributed.world_size()
    missing = [batch for batch in range(len(plan)) if batch not in writer.done]
    if len(missing) < len(plan):
        log(f"resuming an interrupted encoding: {len(missing)} of {len(plan)} batches left")
    mine = missing[rank::ranks]
    if ranks > 1:
        log(f"encoding on {ranks} ranks: rank {rank} takes {len(mine)} of the "
            f"{len(missing)} batches left, on {device}")
    try:
        try:
            encode_batches(model, ids, plan, mine, writer, device=device, compute=compute,
                           layers=layers, all_layers=layers != [encoder.num_layers],
                           pad_id=encoder.tokenizer.pad_token_id or 0, progress=progress,
                           log=log, pooling=pooling, shared=ranks > 1,
                           token_types=ids.pair_starts is not None and encoder.token_types)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            # the model's own forward failing (shapes, an input it wants, memory): one
            # line naming the model; what was encoded before is kept (below)
            raise ModelFailed(f"model '{encoder.name}' failed while encoding: "
                              f"{one_line(exc)}") from None
        if ranks > 1:
            writer.checkpoint(sync=True)
    except BaseException:
        try:
            writer.checkpoint()  # Ctrl-C, an error: keep what is done
        except OSError:
            pass  # e.g. the disk is full: the last checkpoint stands
        finally:
            writer.close()
        raise


def _finish(writer, plan, began):
    """The finished entry; under torchrun rank 0 first checks every rank's batches."""
    if distributed.world_size() > 1:
        distributed.barrier()  # every rank's batches are on disk
        if distributed.rank() != 0:
            writer.close()
            return None
        bad = writer.collect()
        if bad or len(writer.done) < len(plan):
            writer.close()
            raise PoolkitError(
                f"cache entry {writer.tmp}: {len(plan) - len(writer.done)} of {len(plan)} "
                f"batches missing or failing their checksum after all ranks finished (is "
                f"--cache-dir shared?); run the same command again to encode them")
    writer.meta["encode_seconds"] = round(time.perf_counter() - began, 3)
    return writer.finish()


def encode_batches(model, ids, plan, batches, writer, *, device: str, compute: str, layers,
                   all_layers: bool, pad_id: int, progress: bool = False,
                   log=lambda message: None, pooling=None, shared: bool = False,
                   token_types: bool = False) -> None:
    """Run ``model`` over the plan's ``batches`` and write each one's real-token states.

    ``ids`` are the texts' token ids; each batch is padded to its longest text,
    encoded under ``compute`` precision on ``device`` (autocast on CUDA), and
    only its real tokens' states of ``layers`` (all hidden states with
    ``all_layers``, else ``last_hidden_state``) go to ``writer``, cast to the
    cache's dtype on the device. Checkpoints every :data:`CHECKPOINT_EVERY` batches.
    Without a progress bar, ``log`` gets a progress line every :data:`PROGRESS_EVERY`
    seconds and one at the end (``shared``: other ranks encode the plan's other
    batches, so progress counts this rank's ``batches`` only). With ``pooling`` (a
    :class:`~poolkit.pooling.features.BatchPooling`) the writer gets each batch's pooled
    features instead of its states. Pairs of texts (``ids.pair_starts``): the model
    gets each batch's segment ids as ``token_type_ids`` when ``token_types`` (BERT),
    and ``pooling`` gets them too.
    """
    import torch
    from tqdm.auto import tqdm

    model = model.to(device)
    on_cuda = device.startswith("cuda")
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(compute)
    store_dtype = torch.from_numpy(np.zeros(0, dtype=writer.states_dtype)).dtype
    lengths = plan.lengths
    todo = int(sum(plan.offsets[b + 1] - plan.offsets[b] for b in batches))
    total = todo if shared else plan.total_tokens
    bar = tqdm(total=total, initial=total - todo, unit="tok",
               unit_scale=True, desc="encoding", disable=not progress, leave=False)
    lines = None if progress else ProgressLines(total, todo, log)
    try:
        with torch.inference_mode():
            for count, number in enumerate(batches, start=1):
                batch = plan.texts(number)
                input_ids, attention, segs, extra = _batch_inputs(ids, lengths, batch, pad_id,
                                                                  device, token_types)
                with torch.autocast("cuda", dtype=autocast_dtype or torch.bfloat16,
                                    enabled=on_cuda and autocast_dtype is not None):
                    out = model(input_ids=input_ids, attention_mask=attention,
                                output_hidden_states=all_layers, **extra)
                states = ([out.hidden_states[i] for i in layers] if all_layers
                          else [out.last_hidden_state])
                # Only real tokens go to the cache, cast on the device (half the copy in fp16).
                real_mask = attention.bool()
                real = torch.stack([h[real_mask] for h in states]).to(store_dtype).cpu().numpy()
                writer.write(number, real if pooling is None else
                             pooling(lengths[batch], real, segs))
                if count % CHECKPOINT_EVERY == 0:
                    writer.checkpoint()
                bar.update(int(lengths[batch].sum()))
                if lines is not None:
                    lines.update(int(lengths[batch].sum()), len(batch), last=count == len(batches))
    finally:
        bar.close()
        model.to("cpu")


def _batch_inputs(ids, lengths, batch, pad_id: int, device: str, token_types: bool) -> tuple:
    """``(input_ids, attention_mask, segments, extra)`` of the texts ``batch`` (of
    ``lengths`` tokens) on ``device``, padded to the longest; ``segments`` (pairs of texts,
    else ``None``) also go to the model as ``token_type_ids`` (in ``extra``) with
    ``token_types``."""
    import torch

    on_cuda = device.startswith("cuda")
    width = int(lengths[batch].max())
    input_ids = np.full((len(batch), width), pad_id, dtype=np.int64)
    for row, i in enumerate(batch):
        input_ids[row, : lengths[i]] = ids[i]
    input_ids = torch.from_numpy(input_ids)
    attention = (torch.arange(width) < torch.from_numpy(lengths[batch])[:, None]).long()
    segs = (segments(ids.pair_starts[batch], lengths[batch], width)
            if ids.pair_starts is not None else None)
    extra = {}
    if token_types:
        extra["token_type_ids"] = segs.pin_memory() if on_cuda else segs
    if on_cuda:  # pinned host memory lets the copies run asynchronously
        input_ids, attention = input_ids.pin_memory(), attention.pin_memory()
    input_ids = input_ids.to(device, non_blocking=True)
    attention = attention.to(device, non_blocking=True)
    extra = {k: v.to(device, non_blocking=True) for k, v in extra.items()}
    return input_ids, attention, segs, extra


class ProgressLines:
    """Progress of an encoding as log lines, at most one per :data:`PROGRESS_EVERY`
    seconds (and the last): share of tokens done, texts, tokens/s, time left."""

    def __init__(self, total_tokens: int, todo: int, log):
        self.total, self.todo, self.log = total_tokens, todo, log
        self.done = self.texts = 0
        self.began = self.said = time.perf_counter()

    def update(self, tokens: int, texts: int, last: bool = False) -> None:
        self.done += tokens
        self.texts += texts
        now = time.perf_counter()
        if not last and now - self.said < PROGRESS_EVERY:
            return
        self.said = now
        rate = self.done / max(now - self.began, 1e-9)
        left = (self.todo - self.done) / rate if rate > 0 else 0.0
        share = (self.total - self.todo + self.done) / max(self.total, 1)
        self.log(f"encoding: {share:.0%} of {self.total:,} tokens ({self.texts:,} texts this "
                 f"run), {rate:,.0f} tokens/s, about {left:.0f} s left")


def _reuse(cache_dir, find, log):
    """The complete entry ``find()`` names, opened and verified; a damaged one is
    removed (and the next one tried); ``None`` when there is none."""
    while (name := find()) is not None:
        try:
            return open_entry(Path(cache_dir) / name)
        except CacheDamaged as exc:
            log(f"warning: cache entry {Path(cache_dir) / name} is damaged ({exc}); "
                "rebuilding it")
            try:
                shutil.rmtree(Path(cache_dir) / name)
            except OSError as error:
                raise _cache_error(cache_dir, error) from None
    return None


def _size(count: int) -> str:
    """A byte count for people: ``80.6 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024


def _cache_error(cache_dir, error: OSError) -> PoolkitError:
    return PoolkitError(f"cannot write cache directory '{cache_dir}': "
                        f"{error.strerror or error}; free space or choose another --cache-dir "
                        "(or POOLKIT_CACHE_DIR)")
