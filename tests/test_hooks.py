"""Every hook in poolkit/pooling/hookspecs.py, called through a real plugin file; and the
meta-test that keeps it so: a hook without a ``test_hook_<name>`` here, or whose
exact signature the README does not show, fails it (as datasette's test_docs does)."""

import inspect
import re
import sys
from pathlib import Path

import torch
from conftest import PLUGINS_DIR

from poolkit.pooling import hookspecs
from poolkit.pooling.manager import collect_poolers, get_plugin_manager

ROOT = Path(__file__).resolve().parent.parent
#: The README and every page of the docs site.
README = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted(ROOT.glob("docs/*.md"))])


def hook_specs() -> dict:
    """``{name: function}`` of every hook specification."""
    return {name: value for name, value in vars(hookspecs).items()
            if getattr(value, "poolkit_spec", None) is not None}


def test_hook_register_poolers():
    """A plugin file's ``register_poolers(register)`` is called once with a callback;
    what it registers is listed under that plugin and pools as it says."""
    pm = get_plugin_manager(plugins_dir=PLUGINS_DIR)
    found = collect_poolers(pm)
    assert pm.load_errors == []
    pooler, plugin = found["first_last"]
    assert plugin == str(PLUGINS_DIR / "first_last.py")
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    out = pooler.pool(hidden, mask)
    torch.testing.assert_close(out[0], torch.cat([hidden[0, 0], hidden[0, 2]]))
    torch.testing.assert_close(out[1], torch.cat([hidden[1, 0], hidden[1, 1]]))


def test_every_hook_has_a_test_and_its_signature_in_the_readme():
    specs = hook_specs()
    assert sorted(specs) == ["register_poolers"]
    tests = {name for name, value in vars(sys.modules[__name__]).items()
             if name.startswith("test_hook_") and callable(value)}
    for name, spec in specs.items():
        assert (spec.__doc__ or "").strip(), f"hook {name} has no docstring"
        assert f"test_hook_{name}" in tests, f"hook {name} has no test_hook_{name} in {__file__}"
        signature = f"{name}({', '.join(inspect.signature(spec).parameters)})"
        assert re.search(rf"`{re.escape(signature)}`", README), (
            f"README does not show the hook's signature `{signature}`")
