"""poolkit's error types and the one-line form every error is shown in."""


class PoolkitError(Exception):
    """A problem with the user's input, model, data or plugins.

    The message is one line that names the file, column or plugin at fault and,
    where it helps, what to do. The CLI shows it without a traceback.
    """


class ModelFailed(PoolkitError):
    """A model's own forward failed while encoding (an input it wants, a shape, memory):
    with several models, that model fails alone."""


class PluginFailure(Exception):
    """Plugin code failed: raised, exited, hung, or broke its contract.

    ``reason`` is one line; the caller adds which plugin or pooler it was.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Interrupted(Exception):
    """The user pressed Ctrl-C; what finished is saved. The message says how to resume."""


def one_line(exc: BaseException) -> str:
    """``exc`` as one line: ``Type: message``, with the message's first line (a
    library's long explanations follow it) and its whitespace folded; just the
    message for a :class:`PoolkitError`, just the type when there is no message."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    text = " ".join(lines[0].split()) if lines else ""
    if isinstance(exc, (PoolkitError, PluginFailure)) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


#: Why a pooler that asks for segments (``segments = True``) fails on single texts.
NEEDS_PAIRS = ("pools pairs of texts (segments = True), but these items are single texts; "
               "give --text-pair-col")
