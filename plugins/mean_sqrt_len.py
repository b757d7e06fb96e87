"""Mean-sqrt-len pooling: the sum of the real tokens' states divided by sqrt(number of real tokens).

sentence-transformers' ``pooling_mode_mean_sqrt_len_tokens``: between a sum
(grows with length) and a mean (forgets length).
"""

from poolkit import Pooler, hookimpl


class MeanSqrtLenPooler(Pooler):
    name = "mean_sqrt_len"

    def pool(self, hidden, mask):
        padding = ~mask.bool().unsqueeze(-1)
        # Accumulate in fp32: an fp16 sum over hundreds of tokens can overflow.
        total = hidden.float().masked_fill(padding, 0.0).sum(dim=1)
        count = (~padding).sum(dim=1).clamp(min=1)
        return (total / count.float().sqrt()).to(hidden.dtype)


@hookimpl
def register_poolers(register):
    register(MeanSqrtLenPooler())
