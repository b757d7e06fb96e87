"""A plugin whose output_dim() works once and raises on its second call."""

from poolkit import Pooler, hookimpl


class FlakyPooler(Pooler):
    name = "flaky_output_dim"

    def __init__(self):
        self.calls = 0

    def output_dim(self, hidden_size):
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("output_dim called again")
        return hidden_size

    def pool(self, hidden, mask):
        return hidden[:, 0]


@hookimpl
def register_poolers(register):
    register(FlakyPooler())
