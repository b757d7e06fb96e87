"""Mean pooling: the average of the real tokens' states ([CLS] and [SEP] included)."""

from poolkit import Pooler, hookimpl


class MeanPooler(Pooler):
    name = "mean"

    def pool(self, hidden, mask):
        # Accumulate in fp32: an fp16 sum over hundreds of tokens can overflow.
        weights = mask.unsqueeze(-1).float()
        total = (hidden.float() * weights).sum(dim=1)
        count = weights.sum(dim=1).clamp(min=1.0)
        return (total / count).to(hidden.dtype)


@hookimpl
def register_poolers(register):
    register(MeanPooler())
