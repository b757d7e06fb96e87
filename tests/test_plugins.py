"""Plugins: user files from --plugins-dir, direct registration, and every way one can break.

Plugin fixtures are real files: good ones in tests/plugins/, broken ones in
tests/plugins_broken/ (copied one by one into a temporary folder per test, so a
broken file never pollutes another test's plugin set).
"""

import re
import shutil
import sys

import pandas as pd
import pytest
import torch
from conftest import (
    BROKEN_PLUGINS_DIR,
    BUILTIN_POOLERS,
    PLUGINS_DIR,
    TESTS_DIR,
    assert_clean_failure,
    hf_forward,
    invoke,
    plugins_dir_with,
)
from torch.testing import assert_close

import poolkit
from poolkit.pooling.manager import collect_poolers, get_plugin_manager

FIRST_LAST = PLUGINS_DIR / "first_last.py"
TEXTS = ["good film", "the plot was dull and the actor was poor", "fun"]


def broken(name):
    return BROKEN_PLUGINS_DIR / f"{name}.py"



def test_plugins_lists_builtins_with_their_modules():
    result = invoke(["plugins"])
    assert result.exit_code == 0, result.output
    listed = dict(line.split() for line in result.stdout.splitlines())
    for name in BUILTIN_POOLERS:
        assert listed[name] == f"poolkit.plugins.{name}"
    assert result.stderr == ""


def test_user_plugin_file_is_listed(tmp_path):
    result = invoke(["plugins", "--plugins-dir", PLUGINS_DIR])
    assert result.exit_code == 0, result.output
    listed = dict(line.split() for line in result.stdout.splitlines())
    assert listed["first_last"] == str(FIRST_LAST)
    assert set(BUILTIN_POOLERS) <= set(listed)


def test_user_plugin_pools_like_its_reference(tiny_model_dir, tmp_path, hf_model, hf_tokenizer):
    features = poolkit.pool(TEXTS, ["first_last"], model=str(tiny_model_dir),
                            plugins_dir=PLUGINS_DIR, cache_dir=tmp_path / "c", cache_dtype="fp32")
    output, mask = hf_forward(hf_model, hf_tokenizer, TEXTS)
    hidden = output.last_hidden_state
    expected = torch.stack([
        torch.cat([hidden[i, 0], hidden[i, int(mask[i].sum()) - 1]]) for i in range(len(TEXTS))
    ])
    assert features["first_last"].shape == (len(TEXTS), 64)
    assert_close(torch.from_numpy(features["first_last"]), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_user_plugin_appears_in_run_results(small_csv, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    result = invoke(["run", "--data", small_csv, "--model", tiny_model_dir,
                     "--plugins-dir", PLUGINS_DIR, "--poolers", "first_last,mean",
                     "--seeds", 2, "--epochs", 3, "--out", out])
    assert result.exit_code == 0, result.output
    assert "first_last" in result.stdout
    results = pd.read_csv(out / "results.csv")
    rows = results[results["pooler"] == "first_last"]
    assert sorted(rows["seed"]) == [0, 1]
    assert set(rows["dim"]) == {64}
    assert set(rows["plugin"]) == {str(FIRST_LAST)}
    assert set(results["pooler"]) == {"first_last", "mean"}


class InlinePlugin:
    """A plugin object registered on the manager directly (no file, no entry point)."""

    class Doubled(poolkit.Pooler):
        name = "doubled_cls"

        def output_dim(self, hidden_size):
            return 2 * hidden_size

        def pool(self, hidden, mask):
            return torch.cat([hidden[:, 0], 2 * hidden[:, 0]], dim=-1)

    @poolkit.hookimpl
    def register_poolers(self, register):
        register(self.Doubled())


def test_plugin_registered_on_the_manager_is_collected():
    pm = get_plugin_manager()
    pm.register(InlinePlugin(), name="inline")
    found = collect_poolers(pm)
    assert pm.load_errors == []
    pooler, plugin = found["doubled_cls"]
    assert plugin == "inline"
    assert set(BUILTIN_POOLERS) <= set(found)
    hidden = torch.randn(2, 5, 8)
    out = pooler.pool(hidden, torch.ones(2, 5, dtype=torch.long))
    assert_close(out, torch.cat([hidden[:, 0], 2 * hidden[:, 0]], dim=-1))


def test_module_registered_on_the_manager_is_collected():
    from poolkit.plugins import mean

    pm = get_plugin_manager()
    pm.unregister(name="poolkit.plugins.mean")
    assert "mean" not in collect_poolers(pm)
    pm.register(mean, name="again")
    assert collect_poolers(pm)["mean"][1] == "again"


def test_each_manager_is_fresh():
    pm = get_plugin_manager()
    pm.register(InlinePlugin(), name="inline")
    assert "doubled_cls" not in collect_poolers(get_plugin_manager())


def _install_entry_point_distribution(site, monkeypatch, modules):
    """A real installed distribution (dist-info on sys.path) declaring ``poolkit`` entry points."""
    dist_info = site / "poolkit_test_plugins-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: poolkit-test-plugins\nVersion: 0.1\n")
    lines = "".join(f"{name} = {module}\n" for name, module in modules.items())
    (dist_info / "entry_points.txt").write_text(f"[poolkit]\n{lines}")
    monkeypatch.syspath_prepend(str(site))


def test_entry_point_plugin_is_loaded_and_a_broken_one_is_named(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(FIRST_LAST, site / "poolkit_test_ep_first_last.py")
    _install_entry_point_distribution(site, monkeypatch, {
        "ep-first-last": "poolkit_test_ep_first_last",
        "ep-missing": "poolkit_test_ep_not_installed",
    })
    monkeypatch.delitem(sys.modules, "poolkit_test_ep_first_last", raising=False)
    result = invoke(["plugins"])
    assert_clean_failure(result, "ep-missing", "poolkit_test_ep_not_installed")
    listed = dict(line.split() for line in result.stdout.splitlines())
    assert listed["first_last"] == "ep-first-last"
    assert set(BUILTIN_POOLERS) <= set(listed)


def test_plugin_that_fails_to_import_is_named_and_the_others_still_load(tmp_path):
    folder = plugins_dir_with(tmp_path, broken("import_error"), FIRST_LAST)
    result = invoke(["plugins", "--plugins-dir", folder])
    assert_clean_failure(result, "import_error.py", "poolkit_test_no_such_package")
    listed = dict(line.split() for line in result.stdout.splitlines())
    assert {*BUILTIN_POOLERS, "first_last"} <= set(listed)
    error_lines = [line for line in result.stderr.splitlines() if "import_error.py" in line]
    assert len(error_lines) == 1


def test_misspelled_hook_is_named(tmp_path):
    folder = plugins_dir_with(tmp_path, broken("misspelled_hook"), FIRST_LAST)
    result = invoke(["plugins", "--plugins-dir", folder])
    assert_clean_failure(result, "misspelled_hook.py", "'register_pooler'")
    listed = dict(line.split() for line in result.stdout.splitlines())
    assert {*BUILTIN_POOLERS, "first_last"} <= set(listed)


def test_misspelled_hook_error_lists_only_real_hooks(tmp_path):
    folder = plugins_dir_with(tmp_path, broken("misspelled_hook"))
    pm = get_plugin_manager(plugins_dir=folder)
    (error,) = pm.load_errors
    known = re.search(r"known hooks: ([^)]*)\)", error).group(1).split(", ")
    assert known == ["register_poolers"]


def test_duplicate_pooler_name_is_an_error_naming_both_plugins(tmp_path):
    folder = plugins_dir_with(tmp_path, broken("duplicate_mean"))
    result = invoke(["plugins", "--plugins-dir", folder])
    assert_clean_failure(result, "'mean'", "duplicate_mean.py", "poolkit.plugins.mean")
    (line,) = [line for line in result.stderr.splitlines() if "duplicate_mean.py" in line]
    assert "poolkit.plugins.mean" in line
    listed = dict(line.split() for line in result.stdout.splitlines())
    assert listed["mean"] == "poolkit.plugins.mean"  # the first registration stays


@pytest.mark.parametrize("builtin", BUILTIN_POOLERS)
def test_builtin_plugin_works_when_copied_into_a_plugins_dir(tmp_path, builtin):
    """Built-ins use only the public API: a copy imports fine (and then clashes by name)."""
    source = TESTS_DIR.parent / "plugins" / f"{builtin}.py"
    folder = tmp_path / "copies"
    folder.mkdir()
    shutil.copy(source, folder / f"my_{builtin}.py")
    pm = get_plugin_manager(plugins_dir=folder)
    collect_poolers(pm)
    assert pm.load_errors == [
        f"plugin '{folder / f'my_{builtin}.py'}': pooler name '{builtin}' is already "
        f"registered by plugin 'poolkit.plugins.{builtin}'"
    ]


def test_missing_plugins_dir_is_an_error(tmp_path):
    result = invoke(["plugins", "--plugins-dir", tmp_path / "nowhere"])
    assert_clean_failure(result, "Error:", "nowhere")


@pytest.mark.slow
def test_pooler_that_raises_during_run(small_csv, tiny_model_dir, tmp_path):
    folder = plugins_dir_with(tmp_path, broken("explodes"))
    out = tmp_path / "run"
    result = invoke(["run", "--data", small_csv, "--model", tiny_model_dir, "--plugins-dir", folder,
                     "--poolers", "mean,explodes,max", "--seeds", 2, "--epochs", 3, "--out", out])
    assert_clean_failure(result, "Error:", "explodes")
    (error,) = [line for line in result.stderr.splitlines() if "kaboom" in line]
    assert "'explodes'" in error  # one line: the pooler and its reason
    assert "explodes" in result.stderr.strip().splitlines()[-1]  # the closing Error: line
    results = pd.read_csv(out / "results.csv")
    assert sorted(zip(results["pooler"], results["seed"])) == [
        ("max", 0), ("max", 1), ("mean", 0), ("mean", 1)]
    summary = pd.read_csv(out / "summary.csv").set_index("pooler")
    assert summary.loc["explodes", "status"].startswith("failed:")
    assert (summary.loc[["mean", "max"], "status"] == "ok").all()


def test_run_where_every_pooler_fails(small_csv, tiny_model_dir, tmp_path):
    folder = plugins_dir_with(tmp_path, broken("explodes"))
    result = invoke(["run", "--data", small_csv, "--model", tiny_model_dir, "--plugins-dir", folder,
                     "--poolers", "explodes", "--seeds", 1, "--epochs", 2,
                     "--out", tmp_path / "run"])
    assert_clean_failure(result, "Error:", "explodes")


@pytest.mark.parametrize("plugin, reason", [
    ("explodes", "kaboom"),
    ("wrong_shape", r"shape.*33.*32"),
    ("one_row", "shape"),
    ("bad_output_dim", "output_dim"),
    ("returns_nan", "NaN"),
    ("returns_numpy", "torch.Tensor"),
    ("writes_input", "place"),  # in-place write into the read-only cached states
])
def test_pooler_breaking_its_contract_is_reported_by_name(tiny_model_dir, tmp_path, plugin, reason):
    folder = plugins_dir_with(tmp_path, broken(plugin))
    with pytest.raises(poolkit.PoolkitError, match=rf"'{plugin}'.*{reason}"):
        poolkit.pool(TEXTS, [plugin], model=str(tiny_model_dir), plugins_dir=folder,
                     cache_dir=tmp_path / "c")


def test_pooler_writing_into_its_input_does_not_corrupt_the_others(tiny_model_dir, tmp_path):
    from poolkit.config import RunConfig
    from poolkit.pipeline import stages as pipeline

    folder = plugins_dir_with(tmp_path, broken("writes_input"))
    clean = poolkit.pool(TEXTS, ["mean"], model=str(tiny_model_dir), cache_dir=tmp_path / "c")
    poolers = pipeline.resolve_poolers(["writes_input", "mean"], plugins_dir=folder).selected
    assert list(poolers) == ["writes_input", "mean"]  # the vandal pools first
    config = RunConfig(model=str(tiny_model_dir), cache_dir=tmp_path / "c")
    encoded = pipeline.encode_for(config, config.encoder(config.model), poolers, TEXTS)
    pooled = pipeline.pool(encoded)
    assert list(pooled.failures) == ["writes_input@2"]  # pooler@layer: the tiny BERT's last is 2
    assert_close(pooled.arrays["mean@2"], clean["mean"], rtol=0, atol=0)


def test_wrong_shape_in_run_is_reported(small_csv, tiny_model_dir, tmp_path):
    folder = plugins_dir_with(tmp_path, broken("wrong_shape"))
    result = invoke(["run", "--data", small_csv, "--model", tiny_model_dir, "--plugins-dir", folder,
                     "--poolers", "cls,wrong_shape", "--seeds", 1, "--epochs", 2,
                     "--out", tmp_path / "run"])
    assert_clean_failure(result, "Error:", "wrong_shape", "shape")
    results = pd.read_csv(tmp_path / "run" / "results.csv")
    assert set(results["pooler"]) == {"cls"}


@pytest.mark.slow
def test_trainable_pooler_that_raises_during_run(small_csv, tiny_model_dir, tmp_path):
    folder = plugins_dir_with(tmp_path, broken("trainable_explodes"))
    out = tmp_path / "run"
    result = invoke(["run", "--data", small_csv, "--model", tiny_model_dir, "--plugins-dir", folder,
                     "--poolers", "mean,trainable_explodes,attention", "--seeds", 2,
                     "--epochs", 3, "--out", out])
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output
    (error,) = [line for line in result.stderr.splitlines() if "kaboom" in line]
    assert "'trainable_explodes'" in error
    results = pd.read_csv(out / "results.csv")
    assert sorted(set(results["pooler"])) == ["attention", "mean"]
    summary = pd.read_csv(out / "summary.csv").set_index("pooler")
    assert summary.loc["trainable_explodes", "status"].startswith("failed:")
    assert (summary.loc[["mean", "attention"], "status"] == "ok").all()


def test_a_plugin_written_for_0_3_loads_and_pools_unchanged(tiny_model_dir, tmp_path):
    """tests/plugins_03/ holds a plugin with every import path poolkit 0.3 offered."""
    features = poolkit.pool(TEXTS, ["mean_03", "mean"], model=str(tiny_model_dir),
                            plugins_dir=TESTS_DIR / "plugins_03", cache_dir=tmp_path / "c",
                            cache_dtype="fp32")
    mean = torch.from_numpy(features["mean"])
    assert_close(torch.from_numpy(features["mean_03"]), torch.cat([mean, mean], dim=1))
