"""A plugin whose pooler zeroes its input through ``.data`` (no version-counter bump)."""

from poolkit import Pooler, hookimpl


class DataWriterPooler(Pooler):
    name = "writes_through_data"

    def pool(self, hidden, mask):
        out = hidden[:, 0].clone()
        hidden.data.mul_(0)
        return out


@hookimpl
def register_poolers(register):
    register(DataWriterPooler())
