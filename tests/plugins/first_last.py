"""A user plugin: the first and the last real token's states, concatenated (2 * H wide)."""

import torch

from poolkit import Pooler, hookimpl


class FirstLastPooler(Pooler):
    name = "first_last"

    def output_dim(self, hidden_size):
        return 2 * hidden_size

    def pool(self, hidden, mask):
        last = mask.long().sum(dim=1) - 1  # index of the last real token ([SEP])
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return torch.cat([hidden[:, 0], hidden[rows, last]], dim=-1)


@hookimpl
def register_poolers(register):
    register(FirstLastPooler())
