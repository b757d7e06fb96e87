"""The hidden-state cache: every text's real-token states, stored once on disk.

Layout of one cache entry (a folder named by its key):

- ``tokens.bin``: the states of real tokens only (no padding), text after text
  in encoding order, row-major ``(total_tokens, hidden_size)``, fp16 or fp32.
- ``index.npz``: ``starts`` and ``lengths`` (int64, one per text in input
  order) locating each text's rows in ``tokens.bin``.
- ``meta.json``: what the entry was built from, shapes and dtype.

Nothing here is pickled; the token file is read back memory-mapped. Entries
are written under a temporary name and renamed when complete, so a crash
never leaves a half-written entry that looks valid.
"""

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
_DTYPES = {"fp16": np.float16, "fp32": np.float32}


def default_cache_dir() -> Path:
    """``$POOLKIT_CACHE_DIR``, else the user's cache folder (``~/.cache/poolkit``)."""
    env = os.environ.get("POOLKIT_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "poolkit"


def texts_digest(texts) -> str:
    """sha256 over the texts in order (length-prefixed, so boundaries count)."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def cache_key(identity: dict) -> str:
    blob = json.dumps({"format": FORMAT_VERSION, **identity}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class HiddenStateCache:
    """A complete cache entry, read back memory-mapped."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.meta = json.loads((self.path / "meta.json").read_text())
        with np.load(self.path / "index.npz", allow_pickle=False) as index:
            self.starts = index["starts"]
            self.lengths = index["lengths"]
        self.hidden_size = int(self.meta["hidden_size"])
        self.tokens = np.memmap(
            self.path / "tokens.bin",
            dtype=_DTYPES[self.meta["dtype"]],
            mode="r",
            shape=(int(self.meta["total_tokens"]), self.hidden_size),
        )

    def __len__(self) -> int:
        return len(self.lengths)

    @classmethod
    def open(cls, root: Path, key: str):
        """The entry for ``key`` under ``root``, or ``None`` when there is none."""
        path = Path(root) / key
        if not (path / "meta.json").is_file():
            return None
        return cls(path)

    def batches(self, max_tokens: int):
        """Yield index arrays over all texts in storage order, for :meth:`padded`.

        Each batch holds at most ``max_tokens`` padded positions (at least one text).
        """
        order = np.argsort(self.starts, kind="stable")
        for chunk in _token_budget_batches(self.lengths[order], max_tokens):
            yield order[chunk]

    def padded(self, indices):
        """``(hidden, mask)`` for consecutive-in-storage texts ``indices`` (from :meth:`batches`).

        ``hidden`` is float32 ``(batch, seq, hidden_size)`` zero-padded and
        ``mask`` ``(batch, seq)`` int64 with 1 on real tokens.
        """
        import torch

        lengths = self.lengths[indices]
        first, last = self.starts[indices[0]], self.starts[indices[-1]] + lengths[-1]
        flat = torch.from_numpy(np.array(self.tokens[first:last], dtype=np.float32))
        width = int(lengths.max())
        mask = torch.arange(width) < torch.from_numpy(lengths)[:, None]
        hidden = flat.new_zeros(len(indices), width, self.hidden_size)
        hidden[mask] = flat  # row-major fill follows the storage order
        return hidden, mask.long()


class CacheWriter:
    """Streams real-token states to a new cache entry as batches finish."""

    def __init__(self, root: Path, key: str, hidden_size: int, dtype: str, meta: dict):
        self.root = Path(root)
        self.key = key
        self.final = self.root / key
        self.tmp = self.root / f"{key}.partial-{os.getpid()}"
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.np_dtype = _DTYPES[dtype]
        self.meta = {**meta, "format": FORMAT_VERSION, "dtype": dtype, "hidden_size": hidden_size}
        self.file = open(self.tmp / "tokens.bin", "wb")
        self.written = 0

    def add(self, states: np.ndarray) -> int:
        """Append ``states`` ``(tokens, hidden_size)``; return its first row."""
        start = self.written
        self.file.write(np.ascontiguousarray(states, dtype=self.np_dtype).tobytes())
        self.written += len(states)
        return start

    def finish(self, starts: np.ndarray, lengths: np.ndarray) -> HiddenStateCache:
        self.file.close()
        np.savez(self.tmp / "index.npz", starts=starts, lengths=lengths)
        self.meta["total_tokens"] = self.written
        self.meta["num_texts"] = len(lengths)
        (self.tmp / "meta.json").write_text(json.dumps(self.meta, indent=2))
        shutil.rmtree(self.final, ignore_errors=True)
        os.replace(self.tmp, self.final)
        return HiddenStateCache(self.final)

    def abort(self) -> None:
        self.file.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _token_budget_batches(lengths: np.ndarray, max_tokens: int, max_texts: int = 1 << 30):
    """Split consecutive texts into batches whose padded size stays in budget.

    Yields index arrays into ``lengths``. Works best when ``lengths`` is sorted
    (then padding is small); a batch always holds at least one text.
    """
    start = 0
    n = len(lengths)
    while start < n:
        end = start + 1
        width = int(lengths[start])
        while end < n and end - start < max_texts:
            new_width = max(width, int(lengths[end]))
            if new_width * (end - start + 1) > max_tokens:
                break
            width = new_width
            end += 1
        yield np.arange(start, end)
        start = end
