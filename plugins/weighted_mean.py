"""Position-weighted mean pooling: real token i (1-based) gets weight i, weights normalised.

SGPT's weighted mean pooling (Muennighoff, 2022, "SGPT: GPT Sentence Embeddings
for Semantic Search"): later tokens weigh more. Positions count real tokens
only, so the weights do not depend on padding.
"""

from poolkit import Pooler, hookimpl, ops


class WeightedMeanPooler(Pooler):
    name = "weighted_mean"

    def pool(self, hidden, mask):
        """``hidden`` ``(batch, seq, H)``, ``mask`` ``(batch, seq)`` -> ``(batch, H)``."""
        real = mask.bool().float()
        positions = real.cumsum(dim=1) * real  # 1, 2, ..., n on the real tokens, 0 on padding
        total = ops.masked_sum(hidden, mask, weights=positions)
        return (total / positions.sum(dim=1, keepdim=True).clamp(min=1.0)).to(hidden.dtype)


@hookimpl
def register_poolers(register):
    register(WeightedMeanPooler())
