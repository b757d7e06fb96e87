"""A plugin whose pooler raises while pooling."""

from poolkit import Pooler, hookimpl


class ExplodingPooler(Pooler):
    name = "explodes"

    def pool(self, hidden, mask):
        raise RuntimeError("kaboom from the explodes pooler")


@hookimpl
def register_poolers(register):
    register(ExplodingPooler())
