"""Max pooling: the per-dimension maximum over the real tokens' states."""

from poolkit import Pooler, hookimpl, ops


class MaxPooler(Pooler):
    name = "max"

    def pool(self, hidden, mask):
        """``hidden`` ``(batch, seq, H)``, ``mask`` ``(batch, seq)`` -> ``(batch, H)``."""
        return ops.masked_max(hidden, mask)


@hookimpl
def register_poolers(register):
    register(MaxPooler())
