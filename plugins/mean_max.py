"""Mean-max pooling: ``[masked mean, masked max]`` over the real tokens, width ``2 * H``.

The concatenation of the ``mean`` and ``max`` poolers, as sentence-transformers
builds it when both ``pooling_mode_mean_tokens`` and ``pooling_mode_max_tokens``
are on.
"""

from poolkit import Pooler, hookimpl


class MeanMaxPooler(Pooler):
    name = "mean_max"

    def output_dim(self, hidden_size):
        return 2 * hidden_size

    def pool(self, hidden, mask):
        import torch  # here, not at the top: `poolkit plugins` stays fast

        padding = ~mask.bool().unsqueeze(-1)
        # Accumulate in fp32: an fp16 sum over hundreds of tokens can overflow.
        total = hidden.float().masked_fill(padding, 0.0).sum(dim=1)
        count = (~padding).sum(dim=1).clamp(min=1)
        mean = (total / count).to(hidden.dtype)
        # finfo.min, not -1e9: -1e9 does not fit in fp16.
        largest = hidden.masked_fill(padding, torch.finfo(hidden.dtype).min).amax(dim=1)
        return torch.cat([mean, largest], dim=-1)


@hookimpl
def register_poolers(register):
    register(MeanMaxPooler())
