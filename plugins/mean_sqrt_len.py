"""Mean-sqrt-len pooling: the sum of the real tokens' states divided by sqrt(number of real tokens).

sentence-transformers' ``pooling_mode_mean_sqrt_len_tokens``: between a sum
(grows with length) and a mean (forgets length).
"""

from poolkit import Pooler, hookimpl, ops


class MeanSqrtLenPooler(Pooler):
    name = "mean_sqrt_len"

    def pool(self, hidden, mask):
        """``hidden`` ``(batch, seq, H)``, ``mask`` ``(batch, seq)`` -> ``(batch, H)``."""
        total = ops.masked_sum(hidden, mask)
        return (total / ops.token_count(mask).sqrt()).to(hidden.dtype)


@hookimpl
def register_poolers(register):
    register(MeanSqrtLenPooler())
