"""A plugin whose pooler returns one row for the whole batch (numpy would broadcast it)."""

from poolkit import Pooler, hookimpl


class OneRowPooler(Pooler):
    name = "one_row"

    def pool(self, hidden, mask):
        return hidden[:1, 0]  # (1, H) instead of (batch, H)


@hookimpl
def register_poolers(register):
    register(OneRowPooler())
