"""From token states to features: the ``Pooler`` contract, the plugin manager
and hooks, plugin isolation, and the feature sets a run pools."""
