"""Mean-max pooling: ``[masked mean, masked max]`` over the real tokens, width ``2 * H``.

The concatenation of the ``mean`` and ``max`` poolers, as sentence-transformers
builds it when both ``pooling_mode_mean_tokens`` and ``pooling_mode_max_tokens``
are on.
"""

from poolkit import Pooler, hookimpl, ops


class MeanMaxPooler(Pooler):
    name = "mean_max"

    def output_dim(self, hidden_size):
        return 2 * hidden_size

    def pool(self, hidden, mask):
        """``hidden`` ``(batch, seq, H)``, ``mask`` ``(batch, seq)`` -> ``(batch, 2H)``."""
        import torch  # here, not at the top: `poolkit plugins` stays fast

        mean = ops.masked_mean(hidden, mask).to(hidden.dtype)
        return torch.cat([mean, ops.masked_max(hidden, mask)], dim=-1)


@hookimpl
def register_poolers(register):
    register(MeanMaxPooler())
