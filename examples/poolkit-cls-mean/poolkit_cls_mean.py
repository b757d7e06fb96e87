"""[CLS] and mean pooling side by side: a (batch, 2 * hidden_size) vector."""

import torch

from poolkit import Pooler, hookimpl, ops


class ClsMeanPooler(Pooler):
    name = "cls_mean"

    def output_dim(self, hidden_size):
        return 2 * hidden_size

    def pool(self, hidden, mask):
        """``hidden`` ``(batch, seq, H)``, ``mask`` ``(batch, seq)`` -> ``(batch, 2H)``."""
        # ops reduce in fp32 over the real tokens only: an fp16 sum can overflow.
        return torch.cat([hidden[:, 0].float(), ops.masked_mean(hidden, mask)], dim=-1)


@hookimpl
def register_poolers(register):
    register(ClsMeanPooler())
