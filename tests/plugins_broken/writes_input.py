"""A plugin whose pooler writes into its input (the contract says read-only)."""

from poolkit import Pooler, hookimpl


class WritesInputPooler(Pooler):
    name = "writes_input"

    def pool(self, hidden, mask):
        hidden.mul_(0)  # corrupts the token states every later pooler would see
        return hidden[:, 0]


@hookimpl
def register_poolers(register):
    register(WritesInputPooler())
