"""Run directories: a folder poolkit owns, and the heads saved in it as they finish.

A head's saved result is reused only when its heads key (cache entry, labels,
splits, head settings; see :mod:`poolkit.identity`) and its pooler's
fingerprint (the source of the plugin module) both match, so an edited plugin
or changed data is recomputed.
"""

import hashlib
import io
import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from poolkit.errors import PoolkitError
from poolkit.files import (
    MARKER,
    OWN_SUBFOLDERS,
    UNSAFE,
    path_part,
    sha256_file,
    tensors_sha256,
    write_atomic,
    write_tensors,
)
from poolkit.heads.base import TrainedHead
from poolkit.version import __version__

#: What a poolkit folder is made for (its marker's ``kind``).
KINDS = ("run", "suite")


class RunDirectory:
    """A folder poolkit owns: it was created by poolkit (or was empty) and holds
    a :data:`MARKER` listing the files poolkit wrote there.

    poolkit never writes over a file it did not write itself (or that changed
    since), and a run removes the files that earlier runs left and it did not
    write again, so every listed file belongs to the run that last wrote it.
    """

    def __init__(self, path):
        self.path = Path(path)

    def _record(self) -> dict | None:
        try:
            record = json.loads((self.path / MARKER).read_text())
            files = record["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not isinstance(files, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            return None
        return record

    def files(self) -> dict | None:
        """``{relative path: sha256}`` of poolkit's files, or ``None`` if not a run directory."""
        record = self._record()
        return record["files"] if record is not None else None

    def kind(self) -> str | None:
        """What poolkit made the folder for: ``run`` or ``suite`` (read from folders older
        than the record by the files they list), ``None`` when not yet known."""
        record = self._record()
        if record is None:
            return None
        if record.get("kind") in KINDS:
            return record["kind"]
        files = record["files"]
        return "suite" if "suite.json" in files else "run" if files else None

    def claim(self, names=(), subfolders=("heads",), kind: str = "run") -> None:
        """Create the ``kind`` directory (a run's or a suite's, with ``subfolders``), or
        check that the existing folder is poolkit's own of that kind, and that poolkit may
        write ``names`` there; fail with one line before any work, leaving it untouched."""
        try:
            self._refuse_others(kind)
            self.path.mkdir(parents=True, exist_ok=True)
            if self.files() is None:  # the marker first: a folder cut off after is ours
                write_atomic(self.path / MARKER, _marker({}, kind))
            for folder in subfolders:
                (self.path / folder).mkdir(exist_ok=True)
        except OSError as exc:
            raise PoolkitError(f"cannot write {kind} directory '{self.path}': "
                               f"{exc.strerror or exc}; choose another --out") from None
        self._check(names, self.files() or {})

    def verify(self, *names) -> None:
        """Before reading ``names`` (files of this folder): refuse, in one line, a folder
        without poolkit's marker and a file poolkit did not write there or that changed
        since (its sha256 is not the one the marker records). A missing file is left to
        its reader to name."""
        files = self.files()
        if files is None:
            raise PoolkitError(f"'{self.path}' is not a finished poolkit run or suite "
                               f"directory (no readable {MARKER})")
        for name in names:
            path = self.path / name
            if path.is_file() and files.get(name) != sha256_file(path):
                raise PoolkitError(
                    f"'{path}' was changed after poolkit wrote it (its sha256 is not the one "
                    f"{MARKER} records), and poolkit does not read an edited run: restore it "
                    "or run the command again")

    def _refuse_others(self, kind: str) -> None:
        """Refuse a file, a folder poolkit did not make (anything in it but empty
        ``heads``/``models`` folders a cut-off claim left), and poolkit's folder of
        another kind."""
        if self.path.exists() and not self.path.is_dir():
            raise PoolkitError(f"--out '{self.path}' is a file, not a folder; "
                               "choose another --out")
        if not self.path.is_dir():
            return
        if self.files() is None:
            found = sorted(p.name for p in self.path.iterdir()
                           if not (p.name in OWN_SUBFOLDERS and p.is_dir()
                                   and not any(p.iterdir())))
            if found:
                shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
                raise PoolkitError(
                    f"--out '{self.path}' is a folder poolkit did not create (it holds "
                    f"{shown}); poolkit writes only into new, empty or its own run "
                    "folders: choose another --out")
        elif self.kind() not in (None, kind):
            raise PoolkitError(f"--out '{self.path}' is a poolkit {self.kind()} folder, not a "
                               f"{kind} folder, and poolkit does not write one kind's results "
                               "into another's: choose another --out")

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
                write_atomic(self.path / MARKER, _marker(kept, self.kind()))
        except OSError as exc:
            raise PoolkitError(f"cannot write run directory '{self.path}': "
                               f"{exc.strerror or exc}") from None


def check_saved_models(out) -> None:
    """Before a ``--save-models`` run: every ``.safetensors`` file in ``out/models`` is a
    fine-tuned model poolkit wrote there, unchanged since (the sha256 of its tensors in
    its metadata holds), since the run may write over it; else one line naming it."""
    from safetensors import safe_open

    for path in sorted((Path(out) / "models").rglob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as handle:
                recorded = (handle.metadata() or {}).get("sha256")
                intact = recorded == tensors_sha256({k: handle.get_tensor(k)
                                                     for k in handle.keys()})
        except Exception:
            intact = False
        if not intact:
            raise PoolkitError(f"--out '{out}': '{path.relative_to(out)}' is not a model poolkit "
                               "saved there (or it was changed since), and --save-models could "
                               "write over it; move it away or choose another --out")


def _marker(files: dict, kind: str | None) -> str:
    record = {"poolkit": __version__, "files": dict(sorted(files.items()))}
    return json.dumps({**record, "kind": kind} if kind else record, indent=1) + "\n"


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

    Each finished head is two files: ``<set>-seed<N>.json`` (how it trained, its
    metrics, the heads key and plugin fingerprint it was trained under, and a
    sha256 over all of it and the probabilities) and ``.npy`` (its test probabilities, no
    pickle). A head whose files fail the checksum is damaged and trained again.
    """

    def __init__(self, out, key: str, log=lambda message: None, folds: int = 1,
                 subfolder: str | None = None):
        """``subfolder``: the model's label when a run compares several models (its
        heads in ``heads/<label>/``, its saved models in ``models/<label>/``)."""
        self.out = Path(out) if out is not None else None
        self.folder = self.out / "heads" if out is not None else None
        self.models = self.out / "models" if out is not None else None
        if out is not None and subfolder is not None:
            label = UNSAFE.sub("_", subfolder)  # no hash added: older runs keep their folders
            if label.strip(".") == "":  # a model named . or ..: not the folder above
                label = path_part(subfolder)
            self.folder, self.models = self.folder / label, self.models / label
        self.key, self.label = key, subfolder
        self.log = log
        self.folds = folds

    def _path(self, feature_set: str, seed: int, fold: int | str = 0) -> Path:
        """``<set>[-fold<F>]-seed<N>.json``; ``fold="final"``: ``<set>-final-seed<N>.json``."""
        safe = path_part(feature_set)
        part = f"-{fold}" if fold == "final" else f"-fold{fold}" if self.folds > 1 else ""
        return self.folder / f"{safe}{part}-seed{seed}.json"

    def checkpoint(self, feature_set: str, seed: int, fold: int = 0) -> Path | None:
        """Where an unfinished fine-tuning job keeps its end-of-epoch checkpoint."""
        if self.folder is None:
            return None
        return self._path(feature_set, seed, fold).with_suffix(".checkpoint.safetensors")

    def model_saver(self, feature_set: str, seed: int, fold: int = 0):
        """A function saving a fine-tuned model's state dict to
        ``models/[<label>/]<set>[-fold<F>]-seed<N>.safetensors`` in the run directory."""
        path = self.models / self._path(feature_set, seed, fold).with_suffix(".safetensors").name

        def save(state: dict) -> None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_tensors(path, state, {"key": self.key, "sha256": tensors_sha256(state)})
            except OSError as exc:
                raise PoolkitError(f"cannot write run directory '{self.out}': "
                                   f"{exc.strerror or exc}") from None
        return save

    def load(self, feature_set: str, fingerprint: str, seed: int, fold: int | str = 0):
        """The :class:`~poolkit.heads.base.TrainedHead` saved for this head, or ``None``;
        ``fold="final"``: the feature set's final head, with its ``weights``."""
        if self.folder is None:
            return None
        path = self._path(feature_set, seed, fold)
        if not path.exists():
            return None
        weights = None
        try:
            saved = json.loads(path.read_text())
            probabilities = np.load(path.with_suffix(".npy"), allow_pickle=False)
            intact = saved["checksum"] == _head_checksum(
                saved["key"], saved["fingerprint"], saved["head"], probabilities)
            if intact and fold == "final":
                from safetensors.torch import load

                data = path.with_suffix(".safetensors").read_bytes()
                intact = hashlib.sha256(data).hexdigest() == saved["head"]["weights_sha256"]
                weights = load(data) if intact else None
        except (OSError, ValueError, KeyError, TypeError, EOFError):  # EOF: an empty .npy
            intact = False
        if not intact:
            self.log(f"warning: {path} is damaged or was edited (checksum); training that "
                     "head again")
            return None
        if saved["key"] != self.key or saved["fingerprint"] != fingerprint:
            return None
        record = {k: v for k, v in saved["head"].items() if k != "weights_sha256"}
        return TrainedHead(probabilities=probabilities, weights=weights, **record)

    def save(self, head, fingerprint: str) -> None:
        """Save a finished :class:`~poolkit.heads.base.TrainedHead`: how it trained and its
        test probabilities (``.npy``, no pickle); a final head's ``weights`` too
        (``.safetensors``, their sha256 in the checksummed record)."""
        if self.folder is None:
            return
        path = self._path(head.feature_set, head.seed, head.fold)
        probabilities = np.ascontiguousarray(head.probabilities, dtype=np.float64)
        record = {"feature_set": head.feature_set, "seed": head.seed, "fold": head.fold,
                  "best_epoch": head.best_epoch, "epochs": head.epochs,
                  "validation_loss": head.validation_loss, "metrics": head.metrics}
        weights = None
        if head.weights is not None:
            from safetensors.torch import save

            weights = save({k: v.detach().contiguous().cpu() for k, v in head.weights.items()})
            record["weights_sha256"] = hashlib.sha256(weights).hexdigest()
        buffer = io.BytesIO()
        np.save(buffer, probabilities, allow_pickle=False)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path.with_suffix(".npy"), buffer.getvalue())
            if weights is not None:
                write_atomic(path.with_suffix(".safetensors"), weights)
            write_atomic(path, json.dumps({
                "key": self.key, "fingerprint": fingerprint, "head": record,
                "checksum": _head_checksum(self.key, fingerprint, record, probabilities),
            }, indent=1))
        except OSError as exc:
            raise PoolkitError(f"cannot write run directory '{self.out}': "
                               f"{exc.strerror or exc}") from None


def _head_checksum(key: str, fingerprint: str, record: dict, probabilities) -> str:
    hashed = hashlib.sha256(json.dumps([key, fingerprint, record], sort_keys=True).encode())
    hashed.update(np.ascontiguousarray(probabilities, dtype=np.float64).tobytes())
    return hashed.hexdigest()
