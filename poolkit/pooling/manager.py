"""Finding and loading plugins, and collecting the poolers they register.

Every plugin is loaded on its own: one that fails to import (raises, exits,
hangs, changes torch's global settings), misspells a hook or registers a taken
pooler name is recorded in ``PluginManager.load_errors`` with its name, and
the others keep working.
"""

import importlib
import importlib.util
import sys
from pathlib import Path

import pluggy

from poolkit.errors import PluginFailure, PoolkitError, one_line
from poolkit.pooling import hookspecs
from poolkit.pooling.isolation import DEFAULT_TIMEOUT, plugin_code
from poolkit.pooling.pooler import Pooler

ENTRY_POINT_GROUP = "poolkit"

DEFAULT_PLUGINS = (
    "poolkit.plugins.cls",
    "poolkit.plugins.bert_pooler",
    "poolkit.plugins.mean",
    "poolkit.plugins.max",
    "poolkit.plugins.mean_max",
    "poolkit.plugins.mean_sqrt_len",
    "poolkit.plugins.weighted_mean",
    "poolkit.plugins.last_token",
    "poolkit.plugins.first_last_avg",
    "poolkit.plugins.attention",
    "poolkit.plugins.pairs",
)


class PluginManager(pluggy.PluginManager):
    """A ``pluggy.PluginManager`` that keeps per-plugin load errors."""

    def __init__(self):
        super().__init__("poolkit")
        self.add_hookspecs(hookspecs)
        #: One line per plugin that could not be loaded or used.
        self.load_errors: list[str] = []

    def register_checked(self, plugin, name: str) -> None:
        """Register ``plugin``; on a bad hook, record the error and drop it."""
        try:
            self.register(plugin, name=name)
        except Exception as exc:  # pluggy's validation error, a duplicate name
            self.load_errors.append(f"plugin '{name}': {one_line(exc)}")
            return
        # check_pending() for this plugin alone, so a misspelled hook in one
        # plugin does not take the others down.
        for caller in self.get_hookcallers(plugin) or []:
            if caller.spec is None:
                self.unregister(plugin)
                known = ", ".join(
                    sorted(n for n, c in vars(self.hook).items() if getattr(c, "spec", None))
                )
                self.load_errors.append(
                    f"plugin '{name}': unknown hook '{caller.name}' (known hooks: {known})"
                )
                return


def get_plugin_manager(plugins_dir=None, entry_points: bool = True,
                       timeout=DEFAULT_TIMEOUT) -> PluginManager:
    """A fresh plugin manager: built-ins, entry-point plugins and ``plugins_dir/*.py``.

    Each import runs under :class:`~poolkit.pooling.isolation.plugin_code` (``timeout`` seconds).
    """
    pm = PluginManager()
    for module_name in DEFAULT_PLUGINS:
        _register_import(pm, module_name, lambda m=module_name: importlib.import_module(m),
                         timeout)
    if entry_points:
        from importlib import metadata  # (some 20 ms: not for poolkit --help)

        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            _register_import(pm, ep.name, ep.load, timeout)
    if plugins_dir is not None:
        directory = Path(plugins_dir)
        if not directory.is_dir():
            raise PoolkitError(f"--plugins-dir '{directory}' is not a directory")
        for path in sorted(directory.glob("*.py")):
            _register_import(pm, str(path), lambda p=path: _import_file(p), timeout)
    pm.check_pending()
    return pm


def _register_import(pm: PluginManager, name: str, load, timeout) -> None:
    try:
        with plugin_code(timeout):
            plugin = load()
    except PluginFailure as exc:
        pm.load_errors.append(f"plugin '{name}' failed to import: {exc.reason}")
        return
    pm.register_checked(plugin, name)


def _import_file(path: Path):
    module_name = f"poolkit_plugins_dir.{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def collect_poolers(pm: PluginManager, timeout=DEFAULT_TIMEOUT) -> dict:
    """Call every plugin's ``register_poolers`` on its own, under isolation.

    Returns ``{name: (pooler, plugin_name)}``; problems go to ``pm.load_errors``.
    """
    found: dict = {}
    for impl in pm.hook.register_poolers.get_hookimpls():
        plugin_name = impl.plugin_name

        def register(pooler, _plugin=plugin_name):
            problem = _registration_problem(pooler, found)
            if problem:
                pm.load_errors.append(f"plugin '{_plugin}': {problem}")
            else:
                found[pooler.name] = (pooler, _plugin)

        try:
            with plugin_code(timeout):
                impl.function(register=register)
        except PluginFailure as exc:
            pm.load_errors.append(f"plugin '{plugin_name}': {exc.reason}")
    return found


def _registration_problem(pooler, found: dict):
    if not isinstance(pooler, Pooler):
        return f"register() takes a poolkit.Pooler instance, got {type(pooler).__name__}"
    if not isinstance(pooler.name, str) or not pooler.name.strip():
        return f"{type(pooler).__name__} has no name"
    if pooler.name in found:
        return (
            f"pooler name '{pooler.name}' is already registered by plugin "
            f"'{found[pooler.name][1]}'"
        )
    return None
