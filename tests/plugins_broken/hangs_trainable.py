"""A trainable pooler whose forward never returns (an hour's sleep)."""

import time

from poolkit import Pooler, hookimpl


class HangingTrainablePooler(Pooler):
    name = "hangs_trainable"
    trainable = True

    def module(self, hidden_size):
        import torch

        class Hanging(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.weight = torch.nn.Parameter(torch.zeros(hidden_size))

            def forward(self, hidden, mask):
                time.sleep(3600)
                return hidden[:, 0] * self.weight

        return Hanging()


@hookimpl
def register_poolers(register):
    register(HangingTrainablePooler())
