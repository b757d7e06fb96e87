"""poolkit's built-in pooling plugins.

Each module is an ordinary plugin, written exactly as a user would write one:
it imports only poolkit's public API, so it works as it is when copied into a
``--plugins-dir``.
"""
