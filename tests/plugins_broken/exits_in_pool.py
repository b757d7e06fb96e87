"""A plugin whose pooler calls sys.exit() while pooling."""

import sys

from poolkit import Pooler, hookimpl


class ExitingPooler(Pooler):
    name = "exits_in_pool"

    def pool(self, hidden, mask):
        sys.exit(0)


@hookimpl
def register_poolers(register):
    register(ExitingPooler())
