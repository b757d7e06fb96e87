"""A plugin whose pooler never returns (an hour's sleep per batch)."""

import time

from poolkit import Pooler, hookimpl


class HangingPooler(Pooler):
    name = "hangs"

    def pool(self, hidden, mask):
        time.sleep(3600)
        return hidden[:, 0]


@hookimpl
def register_poolers(register):
    register(HangingPooler())
