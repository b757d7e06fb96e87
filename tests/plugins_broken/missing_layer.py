"""A plugin whose pooler combines a layer the model does not have."""

from poolkit import Pooler, hookimpl


class MissingLayerPooler(Pooler):
    name = "missing_layer"
    layers = (1, 99)

    def pool(self, hidden, mask):
        return hidden[0][:, 0]


@hookimpl
def register_poolers(register):
    register(MissingLayerPooler())
