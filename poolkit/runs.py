"""Run directories: per-head results written as each head finishes, reused on re-runs.

A head's saved result is reused only when its run key (cache entry, labels,
splits, head settings) and its pooler's fingerprint (the source of the
plugin module) both match, so an edited plugin or changed data is recomputed.
"""

import hashlib
import inspect
import io
import json
import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .cache import split_entry_name
from .errors import PoolkitError
from .files import sha256_file, write_atomic


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


#: The file that marks a folder as a poolkit run directory and lists poolkit's
#: files in it, each with the sha256 of what poolkit wrote.
MARKER = ".poolkit-run.json"


class RunDirectory:
    """A folder poolkit owns: it was created by poolkit (or was empty) and holds
    a :data:`MARKER` listing the files poolkit wrote there.

    poolkit never writes over a file it did not write itself (or that changed
    since), and a run removes the files that earlier runs left and it did not
    write again, so every listed file belongs to the run that last wrote it.
    """

    def __init__(self, path):
        self.path = Path(path)

    def files(self) -> dict | None:
        """``{relative path: sha256}`` of poolkit's files, or ``None`` if not a run directory."""
        try:
            record = json.loads((self.path / MARKER).read_text())
            files = record["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not isinstance(files, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            return None
        return files

    def claim(self, names=()) -> None:
        """Create the run directory, or check that the existing folder is one, and
        that poolkit may write ``names`` there; fail with one line before any work."""
        try:
            if self.path.exists() and not self.path.is_dir():
                raise PoolkitError(f"--out '{self.path}' is a file, not a folder; "
                                   "choose another --out")
            if self.path.is_dir() and self.files() is None:
                found = sorted(p.name for p in self.path.iterdir())
                if found:
                    shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
                    raise PoolkitError(
                        f"--out '{self.path}' is a folder poolkit did not create (it holds "
                        f"{shown}); poolkit writes only into new, empty or its own run "
                        "folders: choose another --out")
            (self.path / "heads").mkdir(parents=True, exist_ok=True)
            if self.files() is None:
                write_atomic(self.path / MARKER, _marker({}))
        except OSError as exc:
            raise PoolkitError(f"cannot write run directory '{self.path}': "
                               f"{exc.strerror or exc}; choose another --out") from None
        self._check(names, self.files() or {})

    def _check(self, names, files: dict) -> None:
        for name in names:
            path = self.path / name
            if (path.exists() or path.is_symlink()) and (
                    path.is_symlink() or not path.is_file()
                    or files.get(name) != sha256_file(path)):
                raise PoolkitError(
                    f"--out '{self.path}': '{name}' is not a file poolkit wrote there (or it "
                    "was changed since), and poolkit does not write over it; move it away "
                    "or choose another --out")

    def write(self, contents: dict, replace: bool) -> None:
        """Write ``contents`` (``{relative path: data}``, data as for
        :func:`~poolkit.files.write_atomic`) and record them in the marker.

        ``replace=True`` (a run's results): the files poolkit listed that are not
        in ``contents`` are stale and removed, unless changed since. Concurrent
        writers take turns (a lock on the marker).
        """
        try:
            with _locked(self.path / MARKER):
                files = self.files()
                if files is None:
                    raise PoolkitError(f"'{self.path}' is not a poolkit run directory "
                                       f"(no {MARKER})")
                self._check(contents, files)
                kept = {} if replace else dict(files)
                for name, data in contents.items():
                    (self.path / name).parent.mkdir(parents=True, exist_ok=True)
                    write_atomic(self.path / name, data)
                    kept[name] = sha256_file(self.path / name)
                for name in set(files) - set(kept):
                    stale = self.path / name
                    if stale.is_file() and not stale.is_symlink() \
                            and sha256_file(stale) == files[name]:
                        stale.unlink()
                write_atomic(self.path / MARKER, _marker(kept))
        except OSError as exc:
            raise PoolkitError(f"cannot write run directory '{self.path}': "
                               f"{exc.strerror or exc}") from None


def _marker(files: dict) -> str:
    from . import __version__

    return json.dumps({"poolkit": __version__, "files": dict(sorted(files.items()))},
                      indent=1) + "\n"


@contextmanager
def _locked(path: Path):
    """An exclusive lock (POSIX ``flock``) on ``path``'s lock file, held while inside."""
    with open(path.with_suffix(".lock"), "a+") as handle:
        try:
            import fcntl
        except ImportError:  # not POSIX: no locking
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class RunStore:
    """The ``heads/`` folder of a run directory (or nothing, when ``out`` is None).

    Each finished head is two files: ``<set>-seed<N>.json`` (its row, the run
    key and plugin fingerprint it was trained under, and a sha256 over all of
    it and the probabilities) and ``.npy`` (its test probabilities, no pickle).
    A head whose files fail the checksum is damaged and trained again.
    """

    def __init__(self, out, key: str, log=lambda message: None):
        self.folder = Path(out) / "heads" if out is not None else None
        self.key = key
        self.log = log

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
        if not path.exists():
            return None
        try:
            saved = json.loads(path.read_text())
            probabilities = np.load(path.with_suffix(".npy"), allow_pickle=False)
            intact = saved["checksum"] == _head_checksum(
                saved["run_key"], saved["fingerprint"], saved["row"], probabilities)
        except (OSError, ValueError, KeyError, TypeError):
            intact = False
        if not intact:
            self.log(f"warning: {path} is damaged or was edited (checksum); training that "
                     "head again")
            return None
        if saved["run_key"] != self.key or saved["fingerprint"] != fingerprint:
            return None
        return saved["row"], probabilities

    def save(self, feature_set: str, row: dict, fingerprint: str, probabilities) -> None:
        """Save a finished head: its row and its test probabilities (``.npy``, no pickle)."""
        if self.folder is None:
            return
        path = self._path(feature_set, row["seed"])
        probabilities = np.ascontiguousarray(probabilities, dtype=np.float64)
        buffer = io.BytesIO()
        np.save(buffer, probabilities, allow_pickle=False)
        try:
            write_atomic(path.with_suffix(".npy"), buffer.getvalue())
            record = {"run_key": self.key, "fingerprint": fingerprint, "row": row,
                      "checksum": _head_checksum(self.key, fingerprint, row, probabilities)}
            write_atomic(path, json.dumps(record, indent=1))
        except OSError as exc:
            raise PoolkitError(f"cannot write run directory '{self.folder.parent}': "
                               f"{exc.strerror or exc}") from None


def _head_checksum(key: str, fingerprint: str, row: dict, probabilities) -> str:
    digest = hashlib.sha256(json.dumps([key, fingerprint, row], sort_keys=True).encode())
    digest.update(np.ascontiguousarray(probabilities, dtype=np.float64).tobytes())
    return digest.hexdigest()
