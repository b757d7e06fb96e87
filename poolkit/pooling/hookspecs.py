"""Hook specifications: the contract between poolkit and its plugins."""

import pluggy

hookspec = pluggy.HookspecMarker("poolkit")
hookimpl = pluggy.HookimplMarker("poolkit")


@hookspec
def register_poolers(register):
    """Register pooling strategies.

    Call ``register(pooler)`` once per pooler, where ``pooler`` is an instance of
    :class:`poolkit.Pooler` with a unique ``name``. A pooler maps the encoder's
    token states ``hidden`` ``(batch, seq, hidden_size)`` and the attention mask
    ``(batch, seq)`` (1 = real token, 0 = padding) to features ``(batch, D)``,
    where ``D = pooler.output_dim(hidden_size)``. Registering a name that another
    plugin already registered is an error naming both plugins.
    """
