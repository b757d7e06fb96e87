"""poolkit: which way of pooling a BERT encoder's token states works best for my task?"""

from poolkit.api import load, pool, run, suite
from poolkit.errors import PoolkitError
from poolkit.pooling import ops
from poolkit.pooling.hookspecs import hookimpl
from poolkit.pooling.pooler import Pooler

__version__ = "0.3.0"
__all__ = ["Pooler", "PoolkitError", "RunConfig", "RunResult", "hookimpl", "load", "ops", "pool",
           "run", "suite", "__version__"]


def __getattr__(name):
    # RunConfig and RunResult are typed results of run(); imported on first use.
    if name in ("RunConfig", "RunResult"):
        from poolkit import config
        from poolkit.pipeline import stages as pipeline

        return {"RunConfig": config.RunConfig, "RunResult": pipeline.RunResult}[name]
    raise AttributeError(f"module 'poolkit' has no attribute {name!r}")
