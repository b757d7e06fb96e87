"""poolkit: which way of pooling a BERT encoder's token states works best for my task?"""

from .api import pool, run
from .errors import PoolkitError
from .hookspecs import hookimpl
from .pooler import Pooler

__version__ = "0.1.0"
__all__ = ["Pooler", "PoolkitError", "hookimpl", "pool", "run", "__version__"]
