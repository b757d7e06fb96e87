"""A plugin whose pooler declares a width no memory holds."""

from poolkit import Pooler, hookimpl


class HugePooler(Pooler):
    name = "huge_output_dim"

    def output_dim(self, hidden_size):
        return 10**10

    def pool(self, hidden, mask):
        raise AssertionError("never reached")


@hookimpl
def register_poolers(register):
    register(HugePooler())
