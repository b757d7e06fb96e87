"""Writing files safely: whole or not at all, never over what is not poolkit's to replace."""

import hashlib
import json
import os
import re
import stat
from pathlib import Path

from poolkit.errors import PoolkitError

#: The file that marks a folder as poolkit's own (a run or a suite directory) and lists
#: poolkit's files in it, each with the sha256 of what poolkit wrote.
MARKER = ".poolkit-run.json"
#: A poolkit folder's subfolders that are wholly its own (saved heads, fine-tuned models).
OWN_SUBFOLDERS = ("heads", "models")


#: The characters a path part may not hold (all but letters, digits and ``_ . @ + -``).
UNSAFE = re.compile(r"[^A-Za-z0-9_.@+-]")


def path_part(name: str) -> str:
    """``name`` as one safe part of a path: itself when it is only letters, digits and
    ``_ . @ + -`` (and not ``.`` or ``..``), else those characters kept, the others made
    ``_``, and 8 hex digits of its sha256 added, so two names never share a part."""
    safe = UNSAFE.sub("_", name)
    if safe != name or safe.strip(".") == "":
        safe += "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return safe


def owner(path) -> Path | None:
    """The poolkit run or suite directory whose own file ``path`` is (links followed): one
    its marker lists, one inside its ``heads/`` or ``models/``, or its marker and lock;
    ``None`` when no poolkit folder holds it."""
    path = Path(os.path.realpath(path))
    for folder in path.parents:
        marker = folder / MARKER
        if not marker.is_file():
            continue
        try:
            listed = json.loads(marker.read_text(encoding="utf-8")).get("files", {})
        except (OSError, ValueError, AttributeError):
            listed = {}
        inside = path.relative_to(folder).as_posix()
        if (inside in listed or inside.split("/")[0] in OWN_SUBFOLDERS
                or inside in (MARKER, Path(MARKER).with_suffix(".lock").name)):
            return folder
    return None


def refuse_owned(path, option: str) -> None:
    """Refuse, in one line naming ``option``, to write ``path`` when it is a poolkit run or
    suite directory's own file: that folder's results would be lost."""
    folder = owner(path)
    if folder is not None:
        raise PoolkitError(f"{option} '{path}' is a file of the poolkit folder '{folder}', "
                           "which poolkit does not write over from another command; name "
                           "another file")


def check_output(path, option: str = "-o") -> None:
    """Before any work: refuse, in one line naming ``option``, an output file that poolkit
    could not write at the end: a run's own file, a directory, or one in a folder that does
    not exist or is not writable."""
    path = Path(path)
    refuse_owned(path, option)
    if path.is_dir():
        raise PoolkitError(f"{option} '{path}' is a directory; name a file")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise PoolkitError(f"{option} '{path}': its folder '{folder}' does not exist")
    if not os.access(folder, os.W_OK) and not (path.exists() and os.access(path, os.W_OK)):
        raise PoolkitError(f"{option} '{path}': its folder '{folder}' is not writable")


def write_atomic(path, data) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename.

    ``data`` is ``bytes``, ``str`` (UTF-8) or a function that writes into a
    binary file object. Readers see the old file or the new one, never half of
    one; on any failure (a full disk, Ctrl-C) the temp file is removed and the
    old file stays.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(3).hex()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_output(path, data, option: str = "-o") -> None:
    """Write ``data`` (as :func:`write_atomic`) to a file the user named, e.g. ``-o FILE``.

    A regular file (or a new one) is replaced atomically; a symbolic link is
    followed and its target replaced, so the link stays a link; a FIFO, a
    device or a socket is written through, never replaced; a directory is an
    error; a file a poolkit run or suite folder owns is refused (:func:`refuse_owned`).
    """
    path = Path(path)
    refuse_owned(path, option)
    target = path.resolve() if path.is_symlink() else path
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise PoolkitError(f"cannot write '{path}': {exc.strerror or exc}") from None
    try:
        if mode is None or stat.S_ISREG(mode):
            write_atomic(target, data)
        elif stat.S_ISDIR(mode):
            raise PoolkitError(f"cannot write '{path}': it is a directory; name a file")
        else:  # a FIFO, a terminal, /dev/null ...: write into it as it is
            with open(target, "wb") as handle:
                if callable(data):
                    data(handle)
                else:
                    handle.write(data.encode("utf-8") if isinstance(data, str) else data)
    except OSError as exc:
        raise PoolkitError(f"cannot write '{path}': {exc.strerror or exc}") from None


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_tensors(path, tensors: dict, metadata: dict) -> None:
    """``tensors`` (name -> torch tensor) as one safetensors file, no pickle, written
    through :func:`write_atomic`; ``metadata`` string -> string."""
    from safetensors.torch import save

    write_atomic(path, save({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                            metadata=metadata))


def tensors_sha256(tensors: dict) -> str:
    """sha256 over the names, dtypes, shapes and bytes of ``tensors``, in name order."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
