"""A plugin that switches torch's default dtype to float64 when imported."""

import torch

from poolkit import Pooler, hookimpl

torch.set_default_dtype(torch.float64)


class Float64Pooler(Pooler):
    name = "float64_at_import"

    def pool(self, hidden, mask):
        return hidden[:, 0]


@hookimpl
def register_poolers(register):
    register(Float64Pooler())
