"""A user plugin as written for poolkit 0.3, before poolkit's subpackages: every import path it
uses (the package's names, poolkit.ops as a module, poolkit.testing) must keep working."""

import torch

import poolkit.ops
from poolkit import Pooler, hookimpl, ops
from poolkit.ops import masked_mean
from poolkit.testing import check_pooler  # noqa: F401 (the path a plugin's own tests use)


class Mean03Pooler(Pooler):
    name = "mean_03"

    def output_dim(self, hidden_size):
        return 2 * hidden_size

    def pool(self, hidden, mask):
        # the mean twice, through each spelling of the ops module
        assert masked_mean is ops.masked_mean is poolkit.ops.masked_mean
        return torch.cat([poolkit.ops.masked_mean(hidden, mask), masked_mean(hidden, mask)], -1)


@hookimpl
def register_poolers(register):
    register(Mean03Pooler())
