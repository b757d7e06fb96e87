"""[CLS] and mean pooling side by side: a (batch, 2 * hidden_size) vector."""

import torch

from poolkit import Pooler, hookimpl


class ClsMeanPooler(Pooler):
    name = "cls_mean"

    def output_dim(self, hidden_size):
        return 2 * hidden_size

    def pool(self, hidden, mask):
        # Sum in fp32: an fp16 sum over hundreds of tokens can overflow.
        weights = mask.unsqueeze(-1).float()
        mean = (hidden.float() * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
        return torch.cat([hidden[:, 0].float(), mean], dim=-1)


@hookimpl
def register_poolers(register):
    register(ClsMeanPooler())
