"""The house as ARCHITECTURE.md draws it: floors that import only downward, no import cycle,
poolkit's own imports at the top of each module, and short functions (read from the code,
not run)."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "poolkit"

#: poolkit's floors, top down: a module imports poolkit modules of its own floor or below.
FLOORS = (
    ("poolkit", "poolkit.__main__", "poolkit.cli", "poolkit.commands", "poolkit.api",
     "poolkit.testing"),
    ("poolkit.winner",),
    ("poolkit.pipeline",),
    ("poolkit.config", "poolkit.options"),
    ("poolkit.evaluation",),
    ("poolkit.heads",),
    ("poolkit.pooling", "poolkit.data"),
    ("poolkit.encoding",),
    ("poolkit.errors", "poolkit.files", "poolkit.identity", "poolkit.ops", "poolkit.version"),
)
#: Third-party libraries too heavy for ``poolkit --help``: a module that imports one at its
#: top may be imported inside the functions that need it.
HEAVY = ("torch", "transformers", "pandas", "sklearn", "scipy", "matplotlib")
#: poolkit modules one module loads when first used, by design: ``poolkit --help`` lists the
#: commands (``poolkit.cli.COMMANDS``) without importing the library they call.
LOADED_WHEN_USED = {("poolkit.cli", "poolkit.commands")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict:
    return {module_name(p): ast.parse(p.read_text()) for p in PACKAGE.rglob("*.py")}


def imports(tree: ast.Module, known) -> list:
    """``(module imported, at the top?)`` for each import of a poolkit module in ``tree``: an
    import statement (at the top also inside ``if TYPE_CHECKING:``) or an
    ``importlib.import_module("poolkit....")`` call."""
    top = {id(node) for node in tree.body}
    top |= {id(node) for block in tree.body if isinstance(block, ast.If)
            and ast.unparse(block.test) == "TYPE_CHECKING" for node in block.body}
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and ast.unparse(node.func) == "importlib.import_module"
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value.startswith("poolkit")):
            found.append((node.args[0].value, False))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("poolkit"):
            assert node.level == 0, "poolkit imports its own modules by their full names"
            for alias in node.names:  # `from poolkit.x import y`: y may be a module
                target = f"{node.module}.{alias.name}"
                found.append((target if target in known else node.module, id(node) in top))
        elif isinstance(node, ast.Import):
            found += [(a.name, id(node) in top) for a in node.names
                      if a.name.startswith("poolkit")]
    return found


def floor(module: str) -> int:
    owners = [(len(prefix), number) for number, names in enumerate(FLOORS) for prefix in names
              if module == prefix or module.startswith(prefix + ".")]
    assert owners, f"{module} stands on no floor: add it to FLOORS and to ARCHITECTURE.md"
    return max(owners)[1]


def graph() -> dict:
    trees = modules()
    return {name: {target for target, _ in imports(tree, trees)} - {name}
            for name, tree in trees.items()}


def test_every_import_runs_down_or_across_a_floor():
    up = [f"{a} -> {b}" for a, targets in graph().items() for b in targets
          if b != "poolkit" and floor(b) < floor(a)]
    assert not up, f"imports running back up: {up}"


def cycles(edges: dict) -> list:
    """Every import cycle of ``edges`` ({module: modules it imports}) found by a depth-first walk."""
    state, found = {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def test_no_import_cycle():
    edges = {a: {b for b in targets if b != "poolkit"} for a, targets in graph().items()}
    found = cycles(edges)
    assert not found, f"import cycles: {[' -> '.join(c) for c in found]}"


def test_poolkit_imports_sit_at_the_top_unless_the_module_is_heavy():
    trees = modules()

    def heavy(module):
        tree = trees.get(module)
        return tree is not None and any(
            (isinstance(n, ast.Import) and any(a.name.split(".")[0] in HEAVY for a in n.names))
            or (isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] in HEAVY)
            for n in tree.body)

    lazy = [f"{name} imports {target} inside a function" for name, tree in trees.items()
            for target, at_top in imports(tree, trees)
            if not at_top and target != "poolkit" and not heavy(target)
            and (name, target) not in LOADED_WHEN_USED]
    assert not lazy, lazy


def test_the_rules_can_fail():
    # the checks see a cycle, an upward import and a lazy import when there is one
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    tree = ast.parse("def f():\n    from poolkit.cli import main\n")
    assert imports(tree, {"poolkit.cli"}) == [("poolkit.cli", False)]
    tree = ast.parse("if TYPE_CHECKING:\n    from poolkit.api import run\n"
                     "def f():\n    importlib.import_module('poolkit.commands')\n")
    assert imports(tree, {"poolkit.api"}) == [("poolkit.api", True), ("poolkit.commands", False)]
    assert floor("poolkit.cli") < floor("poolkit.encoding.cache")
    assert floor("poolkit.encoding.cache") == floor("poolkit.encoding.model")


def test_no_subpackage_shares_a_name_with_a_public_function():
    import poolkit

    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert subpackages, "poolkit has no subpackages"
    assert not subpackages & set(poolkit.__all__), subpackages & set(poolkit.__all__)
    for name in ("run", "pool", "suite", "load"):
        assert callable(getattr(poolkit, name)), name


def test_architecture_md_draws_the_same_floors():
    """ARCHITECTURE.md's table of floors names the same modules, floor by floor, as FLOORS,
    and every module of poolkit/ stands on one of them."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    table = text.split("## The house, top down", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "`poolkit/" in line]
    drawn = []
    for row in rows:
        where = row.split("|")[2]
        paths = re.findall(r"`(poolkit/[^`]*)`", where)
        drawn.append({module_name(ROOT / p) if p.endswith(".py") else p.strip("/").replace("/", ".")
                      for p in paths})
    expected = [set(names) - {"poolkit.__main__"} for names in FLOORS]
    assert drawn == expected
    for name in modules():
        floor(name)  # every module stands on a floor


def long_functions(tree: ast.Module, limit: int = 60) -> list:
    """``(name, lines)`` of each function in ``tree`` longer than ``limit`` lines, its
    decorators, signature and docstring included."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = node.decorator_list[0].lineno if node.decorator_list else node.lineno
            if node.end_lineno - start + 1 > limit:
                found.append((node.name, node.end_lineno - start + 1))
    return found


def test_no_function_in_poolkit_is_over_60_lines():
    assert long_functions(ast.parse("def f():\n" + "    x = 1\n" * 60)) == [("f", 61)]
    long = {name: found for name, tree in modules().items() if (found := long_functions(tree))}
    assert not long, f"functions over 60 lines: {long}"


def test_every_public_name_is_what_its_module_defines():
    """``poolkit.EXPORTS`` (names loaded when first used) and the TYPE_CHECKING block that
    static readers see name the same things, and each resolves to its module's object."""
    import importlib

    import poolkit

    tree = modules()["poolkit"]
    static = {alias.asname or alias.name: node.module
              for block in tree.body if isinstance(block, ast.If)
              for node in block.body if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert static == {n: ("poolkit" if m == "poolkit.ops" else m) for n, m in
                      poolkit.EXPORTS.items()}
    for name, module in poolkit.EXPORTS.items():
        defined = importlib.import_module(module)
        assert getattr(poolkit, name) is getattr(defined, name, defined), name
    assert set(poolkit.__all__) == {*poolkit.EXPORTS, "__version__"}
    assert "run" in dir(poolkit)
    try:
        poolkit.nope
    except AttributeError as exc:
        assert "nope" in str(exc)
    else:
        raise AssertionError("poolkit.nope did not fail")
