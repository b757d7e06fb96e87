"""A trainable pooler whose module raises in forward."""

from poolkit import Pooler, hookimpl


class ExplodingTrainablePooler(Pooler):
    name = "trainable_explodes"
    trainable = True

    def module(self, hidden_size):
        import torch

        class Exploding(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.weight = torch.nn.Parameter(torch.zeros(hidden_size))

            def forward(self, hidden, mask):
                raise RuntimeError("kaboom from the trainable pooler")

        return Exploding()


@hookimpl
def register_poolers(register):
    register(ExplodingTrainablePooler())
