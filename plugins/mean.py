"""Mean pooling: the average of the real tokens' states ([CLS] and [SEP] included)."""

from poolkit import Pooler, hookimpl, ops


class MeanPooler(Pooler):
    name = "mean"

    def pool(self, hidden, mask):
        """``hidden`` ``(batch, seq, H)``, ``mask`` ``(batch, seq)`` -> ``(batch, H)``."""
        return ops.masked_mean(hidden, mask).to(hidden.dtype)


@hookimpl
def register_poolers(register):
    register(MeanPooler())
