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
from pathlib import Path

import numpy as np

from .errors import PoolkitError
from .results import write_text_atomic


def run_key(cache_path: str, dataset, head_config) -> str:
    """Everything besides the pooler and seed that a head's result depends on."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"cache": Path(cache_path).name, "labels": dataset.label_names,
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

    def _path(self, pooler: str, seed: int) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", pooler)
        if safe != pooler:
            safe += "-" + hashlib.sha256(pooler.encode()).hexdigest()[:8]
        return self.folder / f"{safe}-seed{seed}.json"

    def load(self, pooler: str, fingerprint: str, seed: int):
        """The saved results row of this head, or ``None``."""
        if self.folder is None:
            return None
        try:
            saved = json.loads(self._path(pooler, seed).read_text())
        except (OSError, ValueError):
            return None
        if saved.get("run_key") != self.key or saved.get("fingerprint") != fingerprint:
            return None
        return saved.get("row")

    def save(self, row: dict, fingerprint: str) -> None:
        if self.folder is None:
            return
        record = {"run_key": self.key, "fingerprint": fingerprint, "row": row}
        write_text_atomic(self._path(row["pooler"], row["seed"]), json.dumps(record, indent=1))
