"""ARCHITECTURE.md stays true: every module it names exists, and every name it gives in
backticks is defined in one of the modules it lists (or is a file or folder it names)."""

import ast
import re
from pathlib import Path

import pytest

from poolkit.cli import cli

ROOT = Path(__file__).resolve().parent.parent
TEXT = (ROOT / "ARCHITECTURE.md").read_text()


def _defined_names(path: Path) -> set:
    """Top-level functions, classes and assignments of a module, and class attributes."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


@pytest.mark.slow
def test_every_module_and_name_in_architecture_md_exists():
    quoted = re.findall(r"`([^`]+)`", TEXT)
    paths = [q for q in quoted if "/" in q]
    assert paths, "ARCHITECTURE.md names no files"
    for path in paths:
        assert (ROOT / path).exists(), f"ARCHITECTURE.md names {path}, which does not exist"
    defined = set()
    for path in ROOT.glob("poolkit/**/*.py"):
        defined |= _defined_names(path)
    commands = [cli.get_command(None, name) for name in cli.list_commands(None)]
    options = {opt for command in commands for param in command.params
               for opt in getattr(param, "opts", []) + getattr(param, "secondary_opts", [])}
    for name in quoted:
        if "/" in name:
            continue
        if name.startswith("poolkit "):  # a command: its options must exist
            for option in re.findall(r"--[a-z][a-z-]+", name):
                assert option in options, f"ARCHITECTURE.md names option {option}"
            continue
        for part in re.sub(r"\(.*\)", "", name).split("."):  # `f(args)` names f
            if part in ("poolkit", "click", "option"):
                continue
            if part.startswith("--"):
                assert part in options, f"ARCHITECTURE.md names option {part}, which poolkit lacks"
                continue
            modules = {p.stem for p in ROOT.glob("poolkit/**/*.py")} | {
                p.name for p in ROOT.glob("poolkit/*/")}
            assert part in defined or part in modules, (
                f"ARCHITECTURE.md names `{name}`: '{part}' is defined nowhere in poolkit/")


def test_each_common_change_has_its_place():
    for change in ("Add a pooler", "Add a metric", "Add an export format", "Add a kind of head",
                   "Encode on several processes"):
        assert f"**{change}**" in TEXT, change
