"""Writing files safely: whole or not at all, never over what is not poolkit's to replace."""

import hashlib
import os
import stat
from pathlib import Path

from poolkit.errors import PoolkitError


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


def write_output(path, data) -> None:
    """Write ``data`` (as :func:`write_atomic`) to a file the user named, e.g. ``-o FILE``.

    A regular file (or a new one) is replaced atomically; a symbolic link is
    followed and its target replaced, so the link stays a link; a FIFO, a
    device or a socket is written through, never replaced; a directory is an
    error.
    """
    path = Path(path)
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
