"""From token states to features: the ``Pooler`` contract and its ``ops``, the plugin manager
and hooks, plugin isolation, and the feature sets a run pools."""
