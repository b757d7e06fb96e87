"""The hidden-state cache: every text's real-token states (or, in a pooled entry,
only each fixed feature set's features), stored once on disk.

Layout of one token entry (a folder named by its key and its layers, ``<key>-L6``):

- ``tokens.bin``: the states of real tokens only (no padding), layer after
  layer, and within a layer text after text in the order of the encoder's
  :class:`~poolkit.encoding.batching.BatchPlan`: row-major ``(layers, total_tokens,
  hidden_size)``, fp16 or fp32. Each cached layer is one contiguous block, so
  reading one layer reads only its bytes.
- ``index.npz``: ``starts`` and ``lengths`` (int64, one per text in input
  order) locating each text's rows within a layer's block.
- ``meta.json``: what the entry was built from (model, tokenizer, max length,
  a hash of the texts, this format's version), the layers it holds
  (Hugging Face ``hidden_states`` indices, 0 = embeddings output), shapes,
  dtype, CRC-32 checksums of the two data files, and a sha256 of all of that.

A pooled entry (``--cache-mode pooled``; a folder named by its key and a hash of
its feature sets and their poolers' code, ``<key>-P<hash>``) holds
``features.bin``, one float32 ``(N, D)`` block per feature set with the texts
in batch-plan order, so disk is 4 bytes × N × ΣD whatever the texts' lengths
and the layers; ``index.npz`` (``order``, ``lengths``) and ``meta.json`` (the
feature sets, those whose pooler failed, the same checks) as above.

Nothing here is pickled; the token file is read back memory-mapped. An entry
is written under ``<name>.partial`` and renamed when complete, so a crash never
leaves a half-written entry that looks valid. Each batch has its rows fixed by
the plan, so batches may be written in any order, by any process; the partial
folder's progress records (``progress.json``, and ``progress-rank<r>.json`` of
other torchrun ranks) list the batches on disk with each one's CRC-32, and an
interrupted encoding, with any number of processes, resumes with the others.
Opening an entry checks every field it relies on against the checksums, the
entry's folder name (key and layers) and the files: a damaged entry raises
:class:`CacheDamaged` and is rebuilt, never used.
"""

import json
import math
import os
import shutil
import zlib
from pathlib import Path

import numpy as np

from poolkit.encoding.batching import token_budget_batches
from poolkit.encoding.tokenization import segments
from poolkit.files import write_atomic
from poolkit.identity import CACHE_FORMAT as FORMAT_VERSION
from poolkit.identity import RunIdentity, digest

_DTYPES = {"fp16": np.float16, "fp32": np.float32}
_CHUNK = 16 << 20


class CacheDamaged(Exception):
    """A cache entry whose files do not match its metadata."""


def default_cache_dir() -> Path:
    """``$POOLKIT_CACHE_DIR``, else the user's cache folder (``~/.cache/poolkit``)."""
    env = os.environ.get("POOLKIT_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "poolkit"


def token_cache_bytes(tokens: int, hidden_size: int, layers: int, dtype: str) -> int:
    """Bytes of a token entry's ``tokens.bin``: every real token's states of ``layers``
    layers, stored as ``dtype``."""
    return tokens * hidden_size * layers * np.dtype(_DTYPES[dtype]).itemsize


def entry_name(key: str, layers) -> str:
    """Folder name of the entry for ``key`` holding ``layers``: ``<key>-L3-6``."""
    return f"{key}-L" + "-".join(str(int(layer)) for layer in sorted(layers))


def split_entry_name(name: str):
    """``(key, {layers})`` of an :func:`entry_name`, ``None`` for any other name
    (e.g. a ``.partial`` folder)."""
    key, sep, layers = name.rpartition("-L")
    parts = layers.split("-")
    if not sep or not all(part.isdigit() for part in parts):
        return None
    return key, {int(part) for part in parts}


def find_entry(root: Path, key: str, layers) -> str | None:
    """Name of a complete entry for ``key`` holding at least ``layers`` (the
    one with the fewest layers), or ``None``: a run over one layer reuses a
    layer sweep's entry."""
    wanted = {int(layer) for layer in layers}
    best = None
    for path in Path(root).glob(f"{key}-L*"):
        split = split_entry_name(path.name)
        if not path.is_dir() or split is None or split[0] != key:
            continue
        held = split[1]
        if wanted <= held and (best is None or len(held) < best[0]):
            best = (len(held), path.name)
    return best and best[1]


class HiddenStateCache:
    """A complete, verified cache entry, read back memory-mapped."""

    mode = "tokens"

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.meta = _read_meta(self.path)
            self.hidden_size = self.meta["hidden_size"]
            self.layers = self.meta["layers"]
            dtype = _DTYPES[self.meta["dtype"]]
            total = self.meta["total_tokens"]
            tokens_path = self.path / "tokens.bin"
            expected = token_cache_bytes(total, self.hidden_size, len(self.layers),
                                         self.meta["dtype"])
            if tokens_path.stat().st_size != expected:
                raise CacheDamaged(
                    f"tokens.bin has {tokens_path.stat().st_size} bytes, expected {expected}"
                )
            for name in ("tokens.bin", "index.npz"):
                if file_crc32(self.path / name) != self.meta["crc32"][name]:
                    raise CacheDamaged(f"{name} fails its checksum")
            with np.load(self.path / "index.npz", allow_pickle=False) as index:
                self.starts = index["starts"]
                self.lengths = index["lengths"]
                #: pairs of texts: ``(N,)`` each one's first token of its second text
                self.pair_starts = index["pair_starts"] if "pair_starts" in index else None
            _check_index(self.starts, self.lengths, self.meta["num_texts"], total)
            if self.pair_starts is not None and (
                    self.pair_starts.shape != self.lengths.shape
                    or self.pair_starts.dtype != np.int64 or (self.pair_starts < 1).any()
                    or (self.pair_starts > self.lengths).any()):
                raise CacheDamaged("index.npz: pair_starts do not fit the texts")
        except CacheDamaged:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CacheDamaged(f"{type(exc).__name__}: {exc}") from None
        #: ``(layers, total_tokens, hidden_size)``, memory-mapped copy-on-write
        #: (writable for torch.from_numpy; nothing writes, and writes would
        #: stay in memory).
        self.tokens = np.memmap(tokens_path, dtype=dtype, mode="c",
                                shape=(len(self.layers), total, self.hidden_size))

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def key(self) -> str:
        """The entry's key: what its states were computed from (not which layers it holds)."""
        return split_entry_name(self.path.name)[0]

    def batches(self, max_tokens: int):
        """Yield index arrays over all texts in storage order, for :meth:`padded`.

        Each batch holds at most ``max_tokens`` padded positions (at least one text).
        """
        order = np.argsort(self.starts, kind="stable")
        for chunk in token_budget_batches(self.lengths[order], max_tokens):
            yield order[chunk]

    def states(self, layer: int | None = None) -> np.ndarray:
        """The memory-mapped ``(total_tokens, hidden_size)`` block of ``layer``
        (a cached hidden-state index; ``None``: the highest cached layer)."""
        if layer is None:
            return self.tokens[-1]
        if layer not in self.layers:
            raise KeyError(f"layer {layer} is not cached (cached: {self.layers})")
        return self.tokens[self.layers.index(layer)]

    def padded(self, indices, layer: int | None = None):
        """``(hidden, mask)`` of ``layer`` for consecutive-in-storage texts
        ``indices`` (from :meth:`batches`).

        ``hidden`` is float32 ``(batch, seq, hidden_size)`` zero-padded and
        ``mask`` ``(batch, seq)`` int64 with 1 on real tokens.
        """
        import torch

        lengths = self.lengths[indices]
        first, last = self.starts[indices[0]], self.starts[indices[-1]] + lengths[-1]
        # torch converts fp16 to fp32 several times faster than numpy does.
        flat = torch.from_numpy(self.states(layer)[first:last]).float()
        return pad_tokens(flat, lengths)

    def segments(self, indices):
        """``(batch, seq)`` int64 segment ids of texts ``indices``, as :meth:`padded`
        and :meth:`gather` pad them (0: the first text and padding, 1: the second;
        see :func:`~poolkit.encoding.tokenization.segments`), or ``None`` for single texts."""
        if self.pair_starts is None:
            return None
        lengths = self.lengths[indices]
        return segments(self.pair_starts[indices], lengths, int(lengths.max()))

    def gather(self, indices, layer: int | None = None, standardize=None):
        """Like :meth:`padded` for any texts ``indices``, in that order (used by
        trainable poolers' random batches); with ``standardize`` (a
        :class:`~poolkit.heads.base.Standardization` of ``(hidden_size,)`` tensors) real
        tokens are standardized and padding stays zero."""
        import torch

        indices = np.asarray(indices)
        flat = torch.from_numpy(self.states(layer)[self.token_rows(indices)]).float()
        if standardize is not None:
            flat = standardize.apply(flat)
        return pad_tokens(flat, self.lengths[indices])

    def in_memory(self, layer: int | None = None, standardize=None, reuse=None,
                  chunk: int = 1 << 13) -> "TokenBlock":
        """``layer``'s states read once into memory as float32 (``4 * total_tokens *
        hidden_size`` bytes), standardized as :meth:`gather` does: a
        :class:`TokenBlock` whose ``gather`` gives :meth:`gather`'s tensors, bit for bit,
        without reading the file again.

        ``reuse``: an earlier block of this cache's (another fold's, of any layer), written
        over in place, so no longer valid after: its memory is already the process's, where
        a fresh block's first touch of each page costs more than the copy itself."""
        import torch

        states = torch.from_numpy(self.states(layer))
        # a copy, always (the memory map is copy-on-write, and the block changes in place),
        # with one row of zeros after the tokens: where every padding position reads from
        shape = (len(states) + 1, self.hidden_size)
        if reuse is not None and reuse.cache is self and reuse.block.shape == shape:
            block = reuse.block
        else:
            block = torch.empty(shape)
        block[-1] = 0
        if standardize is not None:
            shift, scale = torch.as_tensor(standardize.shift), torch.as_tensor(standardize.scale)
        # chunk by chunk, so the float32 rows are still in the CPU's cache when standardized
        for start in range(0, len(states), chunk):
            part = block[start : min(start + chunk, len(states))]
            part.copy_(states[start : start + chunk])
            if standardize is not None:  # in place: the same float32 operations as apply()
                part.sub_(shift).div_(scale)
        return TokenBlock(block, self)

    def text_moments(self, layer: int | None = None, chunk: int = 1 << 16) -> tuple:
        """Per text, the float64 sum and sum of squares of its real tokens' states at
        ``layer`` (two ``(texts, hidden_size)`` arrays): the token statistics of any set
        of texts add up from them, in one read of the layer."""
        import torch

        states, order = self.states(layer), np.argsort(self.starts, kind="stable")
        owner = np.repeat(order, self.lengths[order])  # the text of each row, storage order
        sums = torch.zeros(len(self), self.hidden_size, dtype=torch.float64)
        squares = torch.zeros_like(sums)
        first = int(self.starts[order[0]]) if len(order) else 0
        for start in range(0, len(owner), chunk):
            rows = torch.from_numpy(owner[start : start + chunk])
            part = torch.from_numpy(states[first + start : first + start + len(rows)]).double()
            sums.index_add_(0, rows, part)
            squares.index_add_(0, rows, part * part)
        return sums.numpy(), squares.numpy()

    def token_rows(self, indices) -> np.ndarray:
        """The rows of texts ``indices``' real tokens in a layer's block
        (:meth:`states`), text after text."""
        indices = np.asarray(indices)
        lengths = self.lengths[indices]
        firsts = self.starts[indices] - np.concatenate([[0], np.cumsum(lengths)[:-1]])
        return np.repeat(firsts, lengths) + np.arange(int(lengths.sum()))



class TokenBlock:
    """One layer's token states in memory (from :meth:`HiddenStateCache.in_memory`)."""

    def __init__(self, block, cache: HiddenStateCache):
        self.block, self.cache = block, cache
        self.scratch = block.new_empty(0)  # what gather(reuse=True) writes into

    def gather(self, indices, reuse: bool = False):
        """:meth:`HiddenStateCache.gather` of ``indices`` from memory, in one copy.

        ``reuse``: the states are copied into memory this block keeps for it, written over
        by the next such call (a training step's batch, done with before the next one):
        fresh memory for every batch costs as much again as the copy."""
        import torch

        indices = np.asarray(indices)
        lengths, starts = self.cache.lengths[indices], self.cache.starts[indices]
        mask = np.arange(int(lengths.max())) < lengths[:, None]
        rows = torch.from_numpy(
            np.where(mask, starts[:, None] + np.arange(mask.shape[1]), len(self.block) - 1).ravel())
        if not reuse:
            hidden = self.block.index_select(0, rows)
        else:
            if self.scratch.numel() < rows.numel() * self.block.shape[1]:
                self.scratch = self.block.new_empty(rows.numel() * self.block.shape[1])
            hidden = self.scratch[: rows.numel() * self.block.shape[1]].view(len(rows), -1)
            torch.index_select(self.block, 0, rows, out=hidden)
        return hidden.view(*mask.shape, -1), torch.from_numpy(mask).long()


def pad_tokens(flat, lengths):
    """``(hidden, mask)``: ``flat`` ``(tokens, H)`` torch states, texts of ``lengths``
    (numpy) one after another, zero-padded into ``(texts, longest, H)``."""
    import torch

    longest, total = int(lengths.max()), int(lengths.sum())
    # each token's row in the padded (texts * longest, H) view: one copy, no boolean mask
    begins = np.repeat(np.arange(len(lengths)) * longest - (np.cumsum(lengths) - lengths),
                       lengths)
    hidden = flat.new_zeros(len(lengths) * longest, flat.shape[-1])
    hidden.index_copy_(0, torch.from_numpy(begins + np.arange(total)), flat)
    mask = torch.arange(longest) < torch.from_numpy(lengths)[:, None]
    return hidden.view(len(lengths), longest, -1), mask.long()


def _meta_checksum(meta: dict) -> str:
    return digest({k: v for k, v in meta.items() if k != "checksum"})


def _read_meta(path: Path) -> dict:
    """``meta.json`` of the entry at ``path``, every field checked: its checksum, its
    types, and the key and layers of the folder's name (an entry is found by them)."""
    meta = json.loads((path / "meta.json").read_text())
    if not isinstance(meta, dict):
        raise CacheDamaged("meta.json is not a JSON object")
    if meta.get("format") != FORMAT_VERSION:
        raise CacheDamaged(f"format {meta.get('format')}, expected {FORMAT_VERSION}")
    if meta.get("checksum") != _meta_checksum(meta):
        raise CacheDamaged("meta.json fails its checksum")
    ints = ("hidden_size", "total_tokens", "num_texts")
    if not all(type(meta.get(k)) is int and meta[k] >= 0 for k in ints) or meta["hidden_size"] < 1:
        raise CacheDamaged(f"meta.json: {', '.join(ints)} must be counts")
    layers = meta.get("layers")
    if not isinstance(layers, list) or not layers or not all(
            type(x) is int and x >= 0 for x in layers) or layers != sorted(set(layers)):
        raise CacheDamaged(f"meta.json: layers {layers!r} is not a sorted list of layer indices")
    if meta.get("dtype") not in _DTYPES or not isinstance(meta.get("identity"), dict):
        raise CacheDamaged("meta.json: bad dtype or identity")
    crc = meta.get("crc32")
    if not isinstance(crc, dict) or not all(type(crc.get(n)) is int
                                            for n in ("tokens.bin", "index.npz")):
        raise CacheDamaged("meta.json: bad crc32")
    named = split_entry_name(path.name)
    key = RunIdentity.key_of_entry(meta["identity"], meta["dtype"])
    if named is None or named != (key, set(layers)):
        raise CacheDamaged(f"meta.json describes another entry than '{path.name}'")
    return meta


def _check_index(starts, lengths, num_texts: int, total: int) -> None:
    """The texts' rows must tile ``0..total`` exactly, one run of rows per text."""
    if starts.shape != (num_texts,) or lengths.shape != (num_texts,) \
            or starts.dtype != np.int64 or lengths.dtype != np.int64:
        raise CacheDamaged("index.npz does not match meta.json")
    order = np.argsort(starts, kind="stable")
    ends = np.cumsum(lengths[order])
    if num_texts and (lengths.min() < 1 or ends[-1] != total
                      or not np.array_equal(starts[order], ends - lengths[order])):
        raise CacheDamaged("index.npz does not tile the token rows")


class CacheWriter:
    """Writes a cache entry's batches at the rows its :class:`~poolkit.encoding.batching.BatchPlan`
    fixes, in any order; resumable.

    The data file holds blocks one after another (a cached layer's token
    states; in a :class:`PooledWriter`, a feature set's features), each
    ``(rows, width)``; batch ``b`` owns rows ``offsets[b]:offsets[b + 1]`` of
    every block. The entry is written under ``<name>.partial``.
    :meth:`checkpoint` records which batches are on disk; a new writer for the
    same name and plan (the same texts, budget and dtype) continues with the
    others (:attr:`done`). A second writer while the first holds the partial
    entry writes a private folder instead.
    """

    #: the data file's name in the entry
    data_file = "tokens.bin"

    def __init__(self, root: Path, name: str, hidden_size: int, dtype: str, meta: dict,
                 plan, layers, join=None, rank: int = 0, pair_starts=None):
        """``join``: another rank's partial folder to write into (under torchrun: rank
        0 creates it, the others join it; they take no lock and record their batches
        in ``progress-rank<r>.json``). ``pair_starts``: pairs of texts, each one's
        first token of the second text (kept in ``index.npz``)."""
        self.layers = [int(layer) for layer in layers]
        meta = {**meta, "format": FORMAT_VERSION, "dtype": dtype, "hidden_size": hidden_size,
                "layers": self.layers}
        index = {"starts": plan.starts, "lengths": plan.lengths}
        if pair_starts is not None:
            index["pair_starts"] = np.asarray(pair_starts, dtype=np.int64)
        self._open(root, name, dtype, meta, plan, plan.offsets, [hidden_size] * len(self.layers),
                   index, join, rank)

    def _open(self, root, name, dtype, meta, plan, offsets, widths, index, join, rank) -> None:
        self.final = Path(root) / name
        self.tmp = Path(root) / f"{name}.partial"
        self.rank = rank
        self.np_dtype = _DTYPES[dtype]
        #: the dtype of the token states this entry is written from (stored, or pooled
        #: after rounding to it)
        self.states_dtype = self.np_dtype
        itemsize = np.dtype(self.np_dtype).itemsize
        self.plan, self.offsets, self.index = plan, offsets, index
        self.total = int(offsets[-1])
        #: bytes per row of each block, and where each block begins in the data file
        self.row_bytes = [int(width) * itemsize for width in widths]
        self.bases = [self.total * sum(self.row_bytes[:i]) for i in range(len(widths))]
        self.size = self.total * sum(self.row_bytes)
        self.meta = meta
        self.plan_id = {"entry": name, "dtype": dtype, **plan.describe()}
        #: Batches on disk (those a checkpoint recorded, and those written since).
        self.done: set[int] = set()
        #: CRC-32 of each batch's bytes (all its blocks), as written.
        self.crcs: dict[int, int] = {}
        #: ``{feature set id: reason}`` of a pooled entry's feature sets that failed
        #: (their rows are zeros from then on), kept across resumes like :attr:`done`
        self.failed: dict[str, str] = {}
        if join is not None:
            self.tmp, self.lock = Path(join), None
            self.done, self.crcs, self.failed = self._read_progress() or (set(), {}, {})
            self.file = open(self.tmp / self.data_file, "r+b")
            return
        for path in (self.final, self.tmp):  # damage: a file where a folder belongs
            if path.is_symlink() or path.exists() and not path.is_dir():
                path.unlink()
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.lock = _try_lock(self.tmp / ".lock")
        if self.lock is None:
            # Another writer is encoding the same texts: write a private folder
            # (not resumable) rather than share, or wait for, its files.
            self.tmp = Path(root) / f"{name}.partial-{os.getpid()}-{os.urandom(4).hex()}"
            self.tmp.mkdir()
            progress = None
        else:
            progress = self._read_progress()
            if progress is None:
                for stale in self.tmp.iterdir():
                    if stale.name != ".lock":
                        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
            else:
                self.done, self.crcs, self.failed = progress
        self.file = open(self.tmp / self.data_file, "r+b" if progress is not None else "wb")
        # Full size up front: each batch and block is written at its own offset.
        self.file.truncate(self.size)

    @property
    def _progress_file(self) -> str:
        return "progress.json" if self.rank == 0 else f"progress-rank{self.rank}.json"

    def _read_progress(self) -> tuple | None:
        """``(done, crcs, failed)``: the batches every progress record in the partial
        folder (this writer's and other ranks', of any earlier run of the same plan)
        lists, or ``None`` when there is nothing to continue."""
        try:
            size = (self.tmp / self.data_file).stat().st_size
            if size < self.size:
                return None  # (longer is fine: the writer truncates it to size)
            done, crcs, failed = set(), {}, {}
            for path in sorted(self.tmp.glob("progress*.json")):
                try:
                    saved = json.loads(path.read_text())
                    if saved.get("plan") != self.plan_id:
                        continue
                    batches = {int(b): int(c) for b, c in saved["crc"].items()}
                    if sorted(int(b) for b in saved["done"]) != sorted(batches) or not all(
                            0 <= b < len(self.offsets) - 1 for b in batches):
                        continue
                    reasons = {str(k): str(v) for k, v in saved.get("failed", {}).items()}
                except Exception:  # a damaged record: its batches are encoded again
                    continue
                done |= set(batches)
                crcs.update(batches)
                failed.update(reasons)
            if done or (self.tmp / "progress.json").exists():
                return done, crcs, failed
            return None
        except Exception:  # any damage to the progress record: start this entry over
            return None

    def _spans(self, batch: int):
        """``(byte offset, bytes)`` of batch ``batch``'s rows in each block."""
        start, end = int(self.offsets[batch]), int(self.offsets[batch + 1])
        return [(base + start * row, (end - start) * row)
                for base, row in zip(self.bases, self.row_bytes)]

    def write(self, batch: int, blocks) -> None:
        """Write batch ``batch``'s rows of each block: ``blocks`` ``(layers, tokens,
        hidden_size)`` token states (its texts' real tokens, in plan order), or in a
        :class:`PooledWriter` one ``(texts, D)`` array per feature set."""
        if len(blocks) != len(self.row_bytes):
            raise ValueError(f"batch {batch} has {len(blocks)} blocks, expected "
                             f"{len(self.row_bytes)}")
        crc = 0
        for (offset, size), data in zip(self._spans(batch), blocks):
            data = np.ascontiguousarray(data, dtype=self.np_dtype).tobytes()
            if len(data) != size:
                raise ValueError(f"batch {batch} has {len(data)} bytes in a block, expected "
                                 f"{size}")
            self.file.seek(offset)
            self.file.write(data)
            crc = zlib.crc32(data, crc)
        self.done.add(batch)
        self.crcs[batch] = crc

    def checkpoint(self, sync: bool = False) -> None:
        """Record the batches written so far (a resume continues after them);
        ``sync``: on disk too (another node reads them next)."""
        self.file.flush()
        if sync:
            os.fsync(self.file.fileno())
        record = {"plan": self.plan_id, "done": sorted(self.done),
                  "crc": {str(b): self.crcs[b] for b in sorted(self.done)},
                  "failed": self.failed}
        write_atomic(self.tmp / self._progress_file, json.dumps(record))

    def batch_crc(self, batch: int) -> int:
        """CRC-32 of batch ``batch``'s bytes as they are on disk now."""
        crc = 0
        with open(self.tmp / self.data_file, "rb") as handle:
            for offset, size in self._spans(batch):
                handle.seek(offset)
                crc = zlib.crc32(handle.read(size), crc)
        return crc

    def collect(self) -> list:
        """Take in the batches other ranks recorded, checking each one's bytes on disk
        against its recorded CRC; returns the batches that failed (now not done)."""
        self.file.flush()
        done, crcs, failed = self._read_progress() or (set(), {}, {})
        self.done, self.crcs = self.done | done, {**crcs, **self.crcs}
        self.failed = {**failed, **self.failed}
        bad = [b for b in sorted(self.done) if self.batch_crc(b) != self.crcs[b]]
        self.done -= set(bad)
        return bad

    def finish(self):
        """Complete the entry (index, checksums, meta), move it into place and open it."""
        missing = len(self.offsets) - 1 - len(self.done)
        if missing:
            raise ValueError(f"{missing} of {len(self.offsets) - 1} batches not written")
        self.file.close()
        np.savez(self.tmp / "index.npz", **self.index)
        self.meta.update(
            total_tokens=self.plan.total_tokens, num_texts=len(self.plan.lengths),
            crc32={name: file_crc32(self.tmp / name) for name in (self.data_file, "index.npz")},
        )
        self.meta["checksum"] = _meta_checksum(self.meta)
        (self.tmp / "meta.json").write_text(json.dumps(self.meta, indent=2))
        for record in self.tmp.glob("progress*.json"):
            record.unlink(missing_ok=True)
        (self.tmp / ".lock").unlink(missing_ok=True)
        # Another writer may have finished first; damage may have left a file there.
        if self.final.is_symlink() or self.final.exists() and not self.final.is_dir():
            self.final.unlink()
        shutil.rmtree(self.final, ignore_errors=True)
        os.replace(self.tmp, self.final)
        self._unlock()
        return open_entry(self.final)

    def close(self) -> None:
        """Stop writing; a shared partial entry stays for a later resume."""
        self.file.close()
        if self.lock is None and self.rank == 0 and self.tmp.exists() \
                and self.tmp != self.final:
            shutil.rmtree(self.tmp, ignore_errors=True)  # a private folder cannot be resumed
        self._unlock()

    def _unlock(self) -> None:
        if self.lock is not None:
            self.lock.close()  # closing releases the flock
            self.lock = None


def pooled_name(key: str, sets: dict) -> str:
    """Folder name of the pooled entry for ``key`` holding the feature sets ``sets``
    (``{id: pooler fingerprint}``): ``<key>-P<hash of the sets>``."""
    return f"{key}-P{digest(sorted(sets.items()))[:16]}"


def find_pooled_entry(root: Path, key: str, wanted: dict) -> tuple:
    """``(name, lacking)``: a complete pooled entry for ``key`` holding every feature
    set of ``wanted`` (``{id: pooler fingerprint}``, the same fingerprint), the one
    holding fewest; else ``(None, lacking)`` with the ids the closest entry lacks
    (``None`` when there is no pooled entry for ``key`` at all)."""
    best, closest = None, None
    for path in Path(root).glob(f"{key}-P*"):
        if not path.is_dir() or path.name.endswith(".partial") or "." in path.name:
            continue
        try:
            meta = json.loads((path / "meta.json").read_text())
            held = {fs["id"]: fs["fingerprint"] for fs in meta["feature_sets"]}
        except Exception:  # damaged: opening it says so, if it is the one found
            held = {}
        lacking = sorted(k for k, v in wanted.items() if held.get(k) != v)
        if not lacking and (best is None or len(held) < best[0]):
            best = (len(held), path.name)
        if closest is None or len(lacking) < len(closest):
            closest = lacking
    return (best[1], []) if best else (None, closest)


class PooledCache:
    """A complete, verified pooled cache entry: each fixed feature set's features,
    ``(N, D)`` float32.

    ``features.bin`` holds one block per feature set (in ``meta.json``'s
    ``feature_sets`` order), each ``(N, D)`` with the texts in the encoder's
    batch-plan order; ``index.npz`` holds ``order`` (the input index of each
    row) and ``lengths`` (each text's tokens, input order).
    """

    mode = "pooled"

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            meta = json.loads((self.path / "meta.json").read_text())
            if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION \
                    or meta.get("mode") != "pooled":
                raise CacheDamaged("meta.json is not a pooled entry of this format")
            if meta.get("checksum") != _meta_checksum(meta):
                raise CacheDamaged("meta.json fails its checksum")
            self.meta = meta
            self.sets = [(str(fs["id"]), int(fs["dim"])) for fs in meta["feature_sets"]]
            self.failed = {str(k): str(v) for k, v in meta.get("failed", {}).items()}
            num_texts = int(meta["num_texts"])
            held = {fs["id"]: fs["fingerprint"] for fs in meta["feature_sets"]}
            key = RunIdentity.key_of_entry(meta["identity"], meta["states_dtype"])
            if self.path.name != pooled_name(key, held):
                raise CacheDamaged(f"meta.json describes another entry than '{self.path.name}'")
            data = self.path / "features.bin"
            expected = 4 * num_texts * sum(dim for _, dim in self.sets)
            if data.stat().st_size != expected:
                raise CacheDamaged(f"features.bin has {data.stat().st_size} bytes, "
                                   f"expected {expected}")
            for name in ("features.bin", "index.npz"):
                if file_crc32(self.path / name) != meta["crc32"][name]:
                    raise CacheDamaged(f"{name} fails its checksum")
            with np.load(self.path / "index.npz", allow_pickle=False) as index:
                order, self.lengths = index["order"], index["lengths"]
            if order.shape != (num_texts,) or self.lengths.shape != (num_texts,) or not \
                    np.array_equal(np.sort(order), np.arange(num_texts)):
                raise CacheDamaged("index.npz does not match meta.json")
        except CacheDamaged:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CacheDamaged(f"{type(exc).__name__}: {exc}") from None
        #: the input index of each stored row
        self.order = order
        self._data = data

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def key(self) -> str:
        """What heads trained on these features are saved under: the texts and encoder
        (:meth:`HiddenStateCache.key`), marked pooled (its features may differ from a
        token cache's in the last bits)."""
        return self.path.name.rpartition("-P")[0] + "-pooled"

    @property
    def hidden_size(self) -> int:
        return int(self.meta["hidden_size"])

    def features(self, feature_set: str) -> np.ndarray:
        """``(N, D)`` float32 features of ``feature_set`` in input order, read from its
        block in chunks (memory: the features, once, and one chunk)."""
        ids = [key for key, _ in self.sets]
        block = ids.index(feature_set)
        dims = [dim for _, dim in self.sets]
        row = 4 * dims[block]
        out = np.empty((len(self), dims[block]), dtype=np.float32)
        order = self.order
        step = max(1, _CHUNK // row)
        with open(self._data, "rb") as handle:
            handle.seek(4 * len(self) * sum(dims[:block]))
            for start in range(0, len(self), step):
                count = min(step, len(self) - start)
                chunk = np.frombuffer(handle.read(count * row), dtype=np.float32)
                out[order[start : start + count]] = chunk.reshape(count, dims[block])
        return out


class PooledWriter(CacheWriter):
    """Writes a pooled entry: each batch's features, one ``(texts, D)`` block per feature
    set, at the rows of its texts in the batch plan (all of :class:`CacheWriter`'s
    resume, join and checksum rules hold)."""

    data_file = "features.bin"

    def __init__(self, root: Path, name: str, meta: dict, plan, feature_sets: list,
                 join=None, rank: int = 0):
        """``feature_sets``: ``[{"id", "pooler", "layers", "dim", "fingerprint"}]``, in
        block order; ``meta`` as :class:`CacheWriter`'s, with ``states_dtype`` (the
        token states' rounding before pooling) and ``hidden_size``."""
        meta = {**meta, "format": FORMAT_VERSION, "mode": "pooled", "dtype": "fp32",
                "feature_sets": feature_sets}
        self._open(root, name, "fp32", meta, plan, plan.bounds,
                   [fs["dim"] for fs in feature_sets],
                   {"order": plan.order, "lengths": plan.lengths}, join, rank)
        self.states_dtype = _DTYPES[meta["states_dtype"]]

    def finish(self):
        self.meta["failed"] = dict(sorted(self.failed.items()))
        return super().finish()


def open_entry(path: Path):
    """The complete entry at ``path``: a :class:`PooledCache` or a :class:`HiddenStateCache`."""
    if split_entry_name(Path(path).name) is None:
        return PooledCache(path)
    return HiddenStateCache(path)


def parse_budget(spec) -> tuple:
    """``(fraction, bytes)`` of a ``--cache-budget``: a share of the free disk (``0.5``,
    ``50%``) or a size (``20G``, ``500MiB``, ``1.5TB``, bytes); the other is ``None``."""
    text = str(spec).strip().upper().replace(" ", "")
    try:
        if text.endswith("%"):
            fraction = float(text[:-1]) / 100
        elif text and text[-1].isdigit() and float(text) <= 1:
            fraction = float(text)
        else:
            fraction = None
    except ValueError:
        fraction = None
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise ValueError(f"{spec}: a share of the free disk is above 0 and at most 1 (100%)")
        return fraction, None
    units = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    number = text.rstrip("BI")
    unit = ""
    if number and number[-1] in "KMGT":
        number, unit = number[:-1], number[-1]
    try:
        size = float(number) * units[unit]
    except (ValueError, KeyError):
        raise ValueError(f"{spec}: give a share of the free disk (0.5, 50%) or a size "
                         "(20G, 500M)") from None
    if not math.isfinite(size) or (fraction is None and text[-1:].isdigit()
                                   and size != int(size)):
        raise ValueError(f"{spec}: give a share of the free disk (at most 1, or 100%) or a "
                         "size with its unit (1.5G, 500M) or in whole bytes")
    if size <= 0:
        raise ValueError(f"{spec}: give a size above 0")
    return None, int(size)


def free_disk(folder: Path) -> int:
    """Bytes free on the disk that holds ``folder`` (or its nearest existing parent)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def _try_lock(path: Path):
    """An open file holding an exclusive lock on ``path``, or ``None`` if another holds it."""
    handle = open(path, "a+")
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        return handle
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def file_crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc
