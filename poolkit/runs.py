"""Run directories: per-head results written as each head finishes, reused on re-runs.

A head's saved result is reused only when its run key (cache entry, labels,
splits, head settings) and its pooler's fingerprint (the source of the
plugin module) both match, so an edited plugin or changed data is recomputed.
"""

import hashlib
import inspect
import json
import os
import re
import zlib
from pathlib import Path

import numpy as np

from .cache import split_entry_name
from .errors import PoolkitError
from .results import write_text_atomic


def run_key(cache_path: str, dataset, head_config) -> str:
    """Everything besides the pooler and seed that a head's result depends on."""
    digest = hashlib.sha256()
    # The entry's key without its layer list: the same layer's states whatever
    # else the entry holds, so adding layers keeps the finished heads.
    name = Path(cache_path).name
    split = split_entry_name(name)
    entry = split[0] if split else name
    digest.update(json.dumps({"cache": entry, "labels": dataset.label_names,
                              "head": vars(head_config)}, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(dataset.labels).tobytes())
    for name in sorted(dataset.splits):
        digest.update(name.encode() + np.ascontiguousarray(dataset.splits[name]).tobytes())
    return digest.hexdigest()


def pooler_fingerprint(pooler) -> str:
    """Hash of the pooler's class and the source file that defines it."""
    from . import __version__

    cls = type(pooler)
    digest = hashlib.sha256(f"poolkit {__version__} {cls.__module__}.{cls.__qualname__}".encode())
    try:
        digest.update(Path(inspect.getsourcefile(cls)).read_bytes())
    except (TypeError, OSError):  # defined interactively: no file to hash
        digest.update(repr(sorted(vars(cls))).encode())
    return digest.hexdigest()


def ensure_writable(out) -> None:
    """Fail before any work when the run directory cannot be written."""
    folder = Path(out) / "heads"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise PoolkitError(
            f"cannot write run directory '{out}': {exc.strerror or exc}; choose another --out"
        ) from None


class RunStore:
    """The ``heads/`` folder of a run directory (or nothing, when ``out`` is None)."""

    def __init__(self, out, key: str):
        self.folder = Path(out) / "heads" if out is not None else None
        self.key = key

    def _path(self, feature_set: str, seed: int) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.@+-]", "_", feature_set)
        if safe != feature_set:
            safe += "-" + hashlib.sha256(feature_set.encode()).hexdigest()[:8]
        return self.folder / f"{safe}-seed{seed}.json"

    def load(self, feature_set: str, fingerprint: str, seed: int):
        """``(row, test probabilities)`` saved for this head, or ``None``."""
        if self.folder is None:
            return None
        path = self._path(feature_set, seed)
        try:
            saved = json.loads(path.read_text())
            probabilities = np.load(path.with_suffix(".npy"), allow_pickle=False)
        except (OSError, ValueError):
            return None
        if saved.get("run_key") != self.key or saved.get("fingerprint") != fingerprint:
            return None
        if saved.get("probabilities_crc32") != zlib.crc32(probabilities.tobytes()):
            return None
        return saved.get("row"), probabilities

    def save(self, feature_set: str, row: dict, fingerprint: str, probabilities) -> None:
        """Save a finished head: its row and its test probabilities (``.npy``, no pickle)."""
        if self.folder is None:
            return
        path = self._path(feature_set, row["seed"])
        probabilities = np.ascontiguousarray(probabilities, dtype=np.float64)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, probabilities, allow_pickle=False)
        os.replace(tmp, path.with_suffix(".npy"))
        record = {"run_key": self.key, "fingerprint": fingerprint, "row": row,
                  "probabilities_crc32": zlib.crc32(probabilities.tobytes())}
        write_text_atomic(path, json.dumps(record, indent=1))
