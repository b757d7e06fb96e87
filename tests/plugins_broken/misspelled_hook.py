"""A plugin whose hook name is misspelled ('register_pooler', not 'register_poolers')."""

from poolkit import Pooler, hookimpl


class TypoPooler(Pooler):
    name = "typo"

    def pool(self, hidden, mask):
        return hidden[:, 0]


@hookimpl
def register_pooler(register):
    register(TypoPooler())
