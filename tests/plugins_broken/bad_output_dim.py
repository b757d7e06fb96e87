"""A plugin whose pooler declares a width of zero."""

from poolkit import Pooler, hookimpl


class ZeroWidthPooler(Pooler):
    name = "bad_output_dim"

    def output_dim(self, hidden_size):
        return 0

    def pool(self, hidden, mask):
        return hidden[:, 0, :0]


@hookimpl
def register_poolers(register):
    register(ZeroWidthPooler())
