"""poolkit: which way of pooling a BERT encoder's token states works best for my task?

The public names load with the first one used (``poolkit --help`` imports none of
them): :data:`EXPORTS` names each one's module.
"""

import importlib
from typing import TYPE_CHECKING

from poolkit.version import __version__

#: Each public name and the module that defines it.
EXPORTS = {
    "Pooler": "poolkit.pooling.pooler",
    "PoolkitError": "poolkit.errors",
    "RunConfig": "poolkit.config",
    "RunResult": "poolkit.pipeline.stages",
    "hookimpl": "poolkit.pooling.hookspecs",
    "load": "poolkit.api",
    "ops": "poolkit.ops",
    "pool": "poolkit.api",
    "run": "poolkit.api",
    "suite": "poolkit.api",
}

__all__ = ["Pooler", "PoolkitError", "RunConfig", "RunResult", "hookimpl", "load", "ops", "pool",
           "run", "suite", "__version__"]


def __getattr__(name: str):
    if name not in EXPORTS:
        raise AttributeError(f"module 'poolkit' has no attribute {name!r}")
    module = importlib.import_module(EXPORTS[name])
    value = module if module.__name__ == f"poolkit.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *EXPORTS})


if TYPE_CHECKING:  # what static readers (type checkers, the API docs) see
    from poolkit import ops
    from poolkit.api import load, pool, run, suite
    from poolkit.config import RunConfig
    from poolkit.errors import PoolkitError
    from poolkit.pipeline.stages import RunResult
    from poolkit.pooling.hookspecs import hookimpl
    from poolkit.pooling.pooler import Pooler
