"""poolkit's error type: a message a user can act on, shown as one line."""


class PoolkitError(Exception):
    """A problem with the user's input, model, data or plugins.

    The message is one line that names the file, column or plugin at fault and,
    where it helps, what to do. The CLI shows it without a traceback.
    """

