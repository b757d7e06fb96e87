"""poolkit: which way of pooling a BERT encoder's token states works best for my task?"""

from poolkit import ops
from poolkit.api import load, pool, run, suite
from poolkit.config import RunConfig
from poolkit.errors import PoolkitError
from poolkit.pipeline.stages import RunResult
from poolkit.pooling.hookspecs import hookimpl
from poolkit.pooling.pooler import Pooler
from poolkit.version import __version__

__all__ = ["Pooler", "PoolkitError", "RunConfig", "RunResult", "hookimpl", "load", "ops", "pool",
           "run", "suite", "__version__"]
