"""A plugin whose pooler raises KeyboardInterrupt itself (no Ctrl-C was pressed)."""

from poolkit import Pooler, hookimpl


class InterruptingPooler(Pooler):
    name = "interrupts_in_pool"

    def pool(self, hidden, mask):
        raise KeyboardInterrupt


@hookimpl
def register_poolers(register):
    register(InterruptingPooler())
