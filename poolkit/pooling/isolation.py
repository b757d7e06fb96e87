"""Running plugin code so that a broken plugin fails only itself.

Every call into plugin code (its import, ``register_poolers``, a pooler's
``setup``, ``output_dim``, ``pool``, a trainable pooler's ``module`` and
``forward``) runs inside :class:`plugin_code`. Whatever the call does wrong
becomes a :class:`~poolkit.errors.PluginFailure` with a one-line reason:

- any exception, ``BaseException`` subclasses included: ``sys.exit()``, a
  ``KeyboardInterrupt`` the plugin raises itself, ``MemoryError``;
- running past a time budget (``--pooler-timeout``): a hang ends with a failure
  instead of a run that never finishes;
- changing torch's process-wide state (default dtype, default device, grad
  mode, thread count): the state is restored, so the other poolers are unharmed.

The user's own Ctrl-C still stops the run: a SIGINT that arrives while plugin
code runs is told apart from a ``KeyboardInterrupt`` the plugin raises, and is
passed on. Time budgets and the Ctrl-C check need the main thread (signals);
elsewhere plugin code runs without a budget.
"""

import math
import signal
import sys
import threading

from poolkit.errors import PluginFailure, PoolkitError, one_line

#: Default of ``--pooler-timeout``: the most seconds one call into a plugin may take.
DEFAULT_TIMEOUT = 600.0


class _Timeout(BaseException):
    """Raised by the alarm. A BaseException, so a plugin's ``except Exception`` cannot
    swallow it (and the alarm repeats every second in case ``except BaseException`` does)."""


class _State:
    depth = 0  # plugin_code blocks open (they nest: a trainer around a forward call)
    user_interrupt = False  # a real SIGINT arrived while plugin code ran
    deadline = None  # time.monotonic() at which the innermost budget ends
    fired = False
    handler_users = 0  # open handlers() blocks
    saved = None  # the signal handlers handlers() replaced


_state = _State()


def _on_sigint(signum, frame):
    _state.user_interrupt = True
    raise KeyboardInterrupt


def _on_alarm(signum, frame):
    if _state.deadline is not None:
        _state.fired = True
        raise _Timeout


class handlers:
    """``with handlers():`` poolkit's SIGINT and SIGALRM handlers are installed,
    the previous ones restored after. Installing a handler takes ~20 us, so a
    run holds them for its whole length rather than per plugin call; nests.
    Does nothing outside the main thread (or without ``setitimer``)."""

    def __enter__(self):
        self.active = (threading.current_thread() is threading.main_thread()
                       and hasattr(signal, "setitimer"))
        if self.active:
            if _state.handler_users == 0:
                _state.saved = (signal.signal(signal.SIGINT, _on_sigint),
                                signal.signal(signal.SIGALRM, _on_alarm))
            _state.handler_users += 1
        return self

    def __exit__(self, *exc):
        if self.active:
            _state.handler_users -= 1
            if _state.handler_users == 0:
                signal.signal(signal.SIGINT, _state.saved[0])
                signal.signal(signal.SIGALRM, _state.saved[1])
        return False


def torch_state():
    """torch's process-wide settings a plugin could change, or ``None`` before torch is imported."""
    torch = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "get_default_dtype"):
        return None
    # Where a new tensor lands: 5x cheaper to ask than torch.get_default_device().
    device = str(torch.empty(0).device)
    return {"default dtype": torch.get_default_dtype(), "default device": device,
            "grad mode": torch.is_grad_enabled(), "threads": torch.get_num_threads()}


def _restore(state: dict, names) -> None:
    """Put back the settings ``names`` of ``state`` (only those: resetting the
    default device installs a torch function mode, which slows every op)."""
    import torch

    setters = {
        "default dtype": torch.set_default_dtype,
        # None, not "cpu": no device mode at all, as torch starts
        "default device": lambda d: torch.set_default_device(None if d == "cpu" else d),
        "grad mode": torch.set_grad_enabled,
        "threads": torch.set_num_threads,
    }
    for name in names:
        setters[name](state[name])


def _torch_defaults(after: dict) -> dict:
    """What torch starts with, for plugin code that imported torch itself."""
    import torch

    return {"default dtype": torch.float32, "default device": "cpu", "grad mode": True,
            "threads": after["threads"]}


class plugin_code:
    """``with plugin_code(timeout): <a call into plugin code>``.

    Raises :class:`PluginFailure` when the call fails in any way (see the
    module docstring); re-raises the user's Ctrl-C as ``KeyboardInterrupt``.
    ``timeout`` is in seconds (``None``: no budget).
    """

    def __init__(self, timeout=DEFAULT_TIMEOUT):
        self.timeout = timeout

    def __enter__(self):
        import time

        self.before = torch_state()
        if _state.depth == 0:
            _state.user_interrupt = False
        _state.depth += 1
        self.signals = handlers().__enter__()
        self.timed = self.signals.active and bool(self.timeout)
        if self.timed:
            self.outer_deadline = _state.deadline
            deadline = time.monotonic() + float(self.timeout)
            if self.outer_deadline is not None:
                deadline = min(deadline, self.outer_deadline)
            _state.deadline, _state.fired = deadline, False
            signal.setitimer(signal.ITIMER_REAL, max(deadline - time.monotonic(), 1e-3), 1.0)
        return self

    def __exit__(self, kind, exc, tb):
        import time

        fired = False
        if self.timed:
            _state.deadline = None  # first: an alarm from here on does nothing
            signal.setitimer(signal.ITIMER_REAL, 0)
            fired, _state.fired = _state.fired, False
            if self.outer_deadline is not None:  # re-arm the enclosing budget
                _state.deadline = self.outer_deadline
                left = max(self.outer_deadline - time.monotonic(), 1e-3)
                signal.setitimer(signal.ITIMER_REAL, left, 1.0)
        self.signals.__exit__(None, None, None)
        _state.depth -= 1
        changed = self._check_torch_state()
        if kind is None and not fired and not changed:
            return False
        if kind is not None and issubclass(kind, KeyboardInterrupt) and _state.user_interrupt:
            return False  # the user's Ctrl-C: let it stop the run
        if kind is not None and issubclass(kind, PluginFailure):
            return False  # an inner block already said what went wrong
        if fired or (kind is not None and issubclass(kind, _Timeout)):
            reason = f"did not return within --pooler-timeout {self.timeout:g} s"
        elif kind is None:
            reason = changed
        elif issubclass(kind, SystemExit):
            reason = f"called sys.exit({exc.code!r})"
        elif issubclass(kind, KeyboardInterrupt):
            reason = "raised KeyboardInterrupt"
        else:
            reason = one_line(exc)
        raise PluginFailure(reason) from None

    def _check_torch_state(self):
        """Restore torch's settings if the plugin code changed them; say which changed."""
        after = torch_state()
        if after is None:
            return None
        before = self.before if self.before is not None else _torch_defaults(after)
        changed = [name for name in before if after[name] != before[name]]
        if not changed:
            return None
        _restore(before, changed)
        return ("changed torch's " + ", ".join(f"{name} to {after[name]}" for name in changed)
                + " (poolkit restored it)")


def check_timeout(value) -> float:
    """``--pooler-timeout`` as seconds: a finite number above 0."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise PoolkitError(f"--pooler-timeout {value}: give a number of seconds above 0")
    return seconds
