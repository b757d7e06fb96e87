"""poolkit: which way of pooling a BERT encoder's token states works best for my task?"""

from .api import load, pool, run, suite
from .errors import PoolkitError
from .hookspecs import hookimpl
from .pooler import Pooler

__version__ = "0.3.0"
__all__ = ["Pooler", "PoolkitError", "RunConfig", "RunResult", "hookimpl", "load", "ops", "pool",
           "run", "suite", "__version__"]


def __getattr__(name):
    # RunConfig and RunResult are typed results of run(); imported on first use.
    if name in ("RunConfig", "RunResult"):
        from . import config, pipeline

        return {"RunConfig": config.RunConfig, "RunResult": pipeline.RunResult}[name]
    raise AttributeError(f"module 'poolkit' has no attribute {name!r}")
