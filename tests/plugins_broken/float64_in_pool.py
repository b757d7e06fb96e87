"""A plugin whose pooler switches torch's default dtype to float64 while pooling."""

import torch

from poolkit import Pooler, hookimpl


class Float64InPoolPooler(Pooler):
    name = "float64_in_pool"

    def pool(self, hidden, mask):
        torch.set_default_dtype(torch.float64)
        return hidden[:, 0]


@hookimpl
def register_poolers(register):
    register(Float64InPoolPooler())
