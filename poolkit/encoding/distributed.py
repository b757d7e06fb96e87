"""Running under ``torchrun`` (or ``accelerate launch``): ranks and their few collectives.

torchrun starts one process per device and sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; poolkit then joins PyTorch's process group (gloo: the
collectives are a handful of barriers and small objects) and splits the
encoder's batch plan over the ranks. Every rank writes its batches at their
fixed rows of one shared cache entry; rank 0 waits for all, checks what they
wrote, and runs the rest of the comparison alone. Nothing here opens a socket
or starts a process of its own: torchrun's rendezvous does that.
"""

import os
from datetime import timedelta

from poolkit.errors import PoolkitError

#: How long a rank waits at a barrier for the others (the slowest rank's share of
#: the encoding must fit in it).
BARRIER_TIMEOUT = timedelta(hours=12)


def _env(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise PoolkitError(f"environment variable {name}={os.environ[name]!r} is not a number; "
                           "torchrun sets it (unset it to run in one process)") from None


def launched() -> bool:
    """Whether this process is one of several that torchrun started, in their group
    (:func:`init` joined it)."""
    if _env("WORLD_SIZE", 1) <= 1:
        return False
    import torch.distributed as dist

    return dist.is_initialized()


def rank() -> int:
    """This process's rank in the group (0 when not launched)."""
    return _env("RANK", 0) if launched() else 0


def world_size() -> int:
    return _env("WORLD_SIZE", 1) if launched() else 1


def local_rank() -> int:
    """This process's index on its node: its GPU, ``cuda:LOCAL_RANK``."""
    return _env("LOCAL_RANK", 0) if launched() else 0


def init() -> None:
    """Join the process group torchrun set up (once; nothing without torchrun)."""
    size = _env("WORLD_SIZE", 1)
    if size <= 1:
        return
    if not 0 <= _env("RANK", -1) < size:
        raise PoolkitError(f"WORLD_SIZE={size} is set but RANK={os.environ.get('RANK', '')!r} "
                           f"is not one of 0 to {size - 1}; start poolkit with torchrun, which "
                           "sets both (or unset WORLD_SIZE to run in one process)")
    lacking = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if lacking:
        raise PoolkitError(f"WORLD_SIZE={size} is set but {' and '.join(lacking)} "
                           f"{'is' if len(lacking) == 1 else 'are'} not; start poolkit with "
                           "torchrun, which sets them (or unset WORLD_SIZE to run in one process)")
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)


def shutdown() -> None:
    if launched():
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def barrier() -> None:
    if launched():
        import torch.distributed as dist

        dist.barrier()


def broadcast(value):
    """Rank 0's ``value``, on every rank."""
    if not launched():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value) -> list:
    """Every rank's ``value``, in rank order, on every rank."""
    if not launched():
        return [value]
    import torch.distributed as dist

    out = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def check_shared(folder) -> None:
    """Fail on every rank, with one line, unless all ranks see the same ``folder``:
    rank 0 leaves a file there and every rank looks for it."""
    if not launched():
        return
    from pathlib import Path

    folder = Path(folder)
    name = None
    if rank() == 0:
        folder.mkdir(parents=True, exist_ok=True)
        name = f".shared-check-{os.getpid()}-{os.urandom(4).hex()}"
        (folder / name).write_bytes(b"")
    name = broadcast(name)
    seen = gather((folder / name).exists())
    barrier()
    if rank() == 0:
        (folder / name).unlink(missing_ok=True)
    blind = [r for r, ok in enumerate(seen) if not ok]
    if blind:
        raise PoolkitError(
            f"--cache-dir '{folder}' is not shared between the ranks (rank {blind[0]} does not "
            "see rank 0's files there); under torchrun on several nodes give a --cache-dir on "
            "a file system every node mounts")
