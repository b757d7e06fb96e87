"""Position-weighted mean pooling: real token i (1-based) gets weight i, weights normalised.

SGPT's weighted mean pooling (Muennighoff, 2022, "SGPT: GPT Sentence Embeddings
for Semantic Search"): later tokens weigh more. Positions count real tokens
only, so the weights do not depend on padding.
"""

from poolkit import Pooler, hookimpl


class WeightedMeanPooler(Pooler):
    name = "weighted_mean"

    def pool(self, hidden, mask):
        real = mask.bool().unsqueeze(-1)
        # 1, 2, ..., n on the real tokens, 0 on padding; in fp32, like the sum.
        weights = real.float().cumsum(dim=1) * real
        total = hidden.float().masked_fill(~real, 0.0).mul(weights).sum(dim=1)
        return (total / weights.sum(dim=1).clamp(min=1.0)).to(hidden.dtype)


@hookimpl
def register_poolers(register):
    register(WeightedMeanPooler())
