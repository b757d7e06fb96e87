"""A plugin that registers a pooler under a name a built-in already uses ('mean')."""

from poolkit import Pooler, hookimpl


class AnotherMeanPooler(Pooler):
    name = "mean"

    def pool(self, hidden, mask):
        return hidden[:, 0]


@hookimpl
def register_poolers(register):
    register(AnotherMeanPooler())
