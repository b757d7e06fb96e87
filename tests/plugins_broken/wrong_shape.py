"""A plugin whose pooler returns one column more than it declares."""

import torch

from poolkit import Pooler, hookimpl


class WrongShapePooler(Pooler):
    name = "wrong_shape"

    def pool(self, hidden, mask):
        extra = torch.zeros(hidden.shape[0], 1, dtype=hidden.dtype)
        return torch.cat([hidden[:, 0], extra], dim=-1)  # (batch, H + 1), declared H


@hookimpl
def register_poolers(register):
    register(WrongShapePooler())
