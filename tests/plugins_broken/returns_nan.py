"""A plugin whose pooler returns NaN for every text."""

import torch

from poolkit import Pooler, hookimpl


class NanPooler(Pooler):
    name = "returns_nan"

    def pool(self, hidden, mask):
        return torch.full_like(hidden[:, 0], float("nan"))


@hookimpl
def register_poolers(register):
    register(NanPooler())
