"""A plugin whose pooler returns a numpy array instead of a torch tensor."""

from poolkit import Pooler, hookimpl


class NumpyPooler(Pooler):
    name = "returns_numpy"

    def pool(self, hidden, mask):
        return hidden[:, 0].numpy()


@hookimpl
def register_poolers(register):
    register(NumpyPooler())
