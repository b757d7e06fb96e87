"""A plugin that calls sys.exit() while it is imported."""

import sys

from poolkit import Pooler, hookimpl

sys.exit(0)


class NeverRegistered(Pooler):
    name = "exits_at_import"

    def pool(self, hidden, mask):
        return hidden[:, 0]


@hookimpl
def register_poolers(register):
    register(NeverRegistered())
