"""Every option declared once (poolkit/options.py): the CLI of run and suite, the Python API's
keywords, the suite file's keys and RunConfig's fields all come from the declarations, and
values are checked there for every surface."""

import inspect
from dataclasses import FrozenInstanceError, fields
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import poolkit
from poolkit import cli as cli_group
from poolkit import commands as cli_module
from poolkit.config import RunConfig
from poolkit.errors import PoolkitError
from poolkit.heads.base import FineTuneConfig, HeadConfig
from poolkit.options import OPTIONS, SUITE_OPTIONS, TASK_OPTIONS
from poolkit.pipeline.suites import read_suite, task_configs

#: What `poolkit run` takes besides the declared options: where to write and what to print.
RUN_COMMAND_ONLY = {"out", "plot_formats", "wide"}


def _params(command: click.Command) -> dict:
    return {p.name: p for p in command.params if isinstance(p, click.Option)}


def test_poolkit_run_has_every_declared_option_and_no_other():
    declared = {name for name, option in OPTIONS.items() if option.cli}
    assert set(_params(cli_module.run)) == declared | RUN_COMMAND_ONLY


def test_every_option_a_suite_file_takes_is_an_option_of_poolkit_suite(monkeypatch):
    params = _params(cli_module.suite)
    assert set(SUITE_OPTIONS) <= set(params)
    assert set(params) - set(SUITE_OPTIONS) == {"out", "plot_formats", "dry_run"}
    # the six a suite file took before poolkit suite had them
    six = ("cache_dtype", "precision", "prompt", "attn_implementation", "trust_remote_code",
           "pooler_timeout")
    assert set(six) <= set(params)

    def given(suite_file, out=None, log=None, **options):
        raise _Named(options)

    monkeypatch.setattr(cli_module, "run_suite", given)
    args = ["--cache-dtype", "fp32", "--precision", "fp32", "--prompt", "q: ",
            "--attn-implementation", "eager", "--trust-remote-code", "--pooler-timeout", "9"]
    options = CliRunner().invoke(cli_group.cli, ["--debug", "suite", *args]).exception.args[0]
    assert [options[name] for name in six] == ["fp32", "fp32", "q: ", "eager", True, 9.0]
    # what is not given is None, so that the suite file's [defaults] apply
    options = CliRunner().invoke(cli_group.cli, ["--debug", "suite"]).exception.args[0]
    assert all(options[name] is None for name in SUITE_OPTIONS)


def test_poolkit_suite_help_lists_every_suite_option():
    text = CliRunner().invoke(cli_group.cli, ["suite", "--help"], terminal_width=200).output
    for name in SUITE_OPTIONS:
        assert OPTIONS[name].flag_name in text, name


def test_the_api_keywords_and_runconfig_fields_come_from_the_declarations():
    keywords = set(inspect.signature(poolkit.run).parameters)
    assert keywords == {n for n, o in OPTIONS.items() if o.api} | {"out", "progress", "log"}
    own = {f.name for f in fields(RunConfig)}
    assert own == {n for n, o in OPTIONS.items() if o.into is None} | {"out", "progress"}
    for f in fields(RunConfig):  # a field's identity is its option's
        if f.name in OPTIONS:
            assert f.metadata["identity"] == OPTIONS[f.name].identity, f.name


def test_every_declaration_says_where_it_applies_in_known_words():
    from poolkit.options import GROUPS, IDENTITY, KINDS, SCOPES

    for name, option in OPTIONS.items():
        assert option.scope in SCOPES and option.identity in IDENTITY, name
        assert option.group in GROUPS and option.kind in KINDS, name
        assert option.help.endswith((".", ")")), name


def test_a_task_option_is_a_key_of_a_suite_files_tasks_and_not_of_its_defaults():
    assert set(TASK_OPTIONS).isdisjoint(SUITE_OPTIONS)
    assert {"data", "text_col", "label_col", "labels", "max_texts"} <= set(TASK_OPTIONS)


def test_from_options_normalises_once_for_every_surface():
    config = RunConfig.from_options({"poolers": "mean", "model": ["m"], "seeds": [0, 2],
                                     "finetune": True, "finetune_epochs": 5, "epochs": 7})
    assert config.poolers == ("mean",)
    assert config.model == "m"
    assert config.seeds == (0, 2)
    assert config.finetune == FineTuneConfig(epochs=5)
    assert config.head == HeadConfig(max_epochs=7)
    assert RunConfig.from_options({"finetune": False}).finetune is None
    assert RunConfig.from_options({"head": HeadConfig(dropout=0.5), "lr": 0.1}).head == \
        HeadConfig(dropout=0.5, learning_rate=0.1)
    assert RunConfig.from_options({"metric": None}).metric == RunConfig().metric


@pytest.mark.parametrize("values, message", [
    ({"seeds": "12"}, "seeds: give a count or a list of integers, not '12'"),
    ({"max_texts": "100"}, "max_texts: give an integer, not '100'"),
    ({"folds": True}, "folds: give an integer, not True"),
    ({"trust_remote_code": "yes"}, "trust_remote_code: give true or false, not 'yes'"),
    ({"seeds": [1, "2"]}, r"seeds: give a count or a list of integers, not \[1, '2'\]"),
    ({"no_such": 1}, "no_such: no such option"),
    ({"head": {"max_epochs": 3}}, "head: give a HeadConfig"),
    ({"finetune": "yes"}, "finetune: give true, false or a FineTuneConfig"),
])
def test_a_value_of_the_wrong_kind_is_one_line_naming_the_option(values, message):
    with pytest.raises(PoolkitError, match=message):
        RunConfig.from_options(values)


def test_a_suite_files_value_of_the_wrong_kind_names_the_file_the_table_and_the_key(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("[defaults]\nseeds = '12'\n[[task]]\nname = 'a'\ndata = 'a.csv'\n")
    with pytest.raises(PoolkitError, match=r"suite file '.*s.toml': \[defaults\] seeds: give a "
                                           "count or a list of integers, not '12'"):
        task_configs(read_suite(path), {})
    path.write_text("[[task]]\nname = 'a'\ndata = 'a.csv'\nmax_texts = '100'\n")
    with pytest.raises(PoolkitError, match=r"suite file '.*s.toml': task 'a': max_texts: give "
                                           "an integer, not '100'"):
        task_configs(read_suite(path), {})
    # the command line's value is its own, not the file's
    path.write_text("[defaults]\nseeds = 3\n[[task]]\nname = 'a'\ndata = 'a.csv'\n")
    _, configs = task_configs(read_suite(path), {"seeds": 2})
    assert configs["a"].seeds == 2


#: The run folders poolkit 0.3.0 (34ed19f, before options were declared once) named for these
#: commands, and the suite folders of SUITE under these options: a run folder made then is
#: found and reused now. (A suite's folder hashes its tasks' data paths: SUITE is read by
#: a relative path, so they are the same on every machine.)
RELEASED_RUN_FOLDERS = {
    (): "rotten_tomatoes-98e0b384",
    ("--data", "x.csv", "--seeds", "3", "--poolers", "mean,cls"): "x-2dd7fa0f",
    ("--model", "a,b", "--layers", "all", "--finetune", "--max-texts", "100"):
        "rotten_tomatoes-51e05158",
    ("--protocol", "senteval", "--label-pattern", "^(a|b)$", "--attn-implementation", "sdpa",
     "--prompt", "q: "): "rotten_tomatoes-d59eb199",
    ("--epochs", "5", "--lr", "0.01", "--dropout", "0.1", "--cache-mode", "pooled",
     "--labels", "b,a", "--text-pair-col", "p", "--max-train-texts", "50"):
        "rotten_tomatoes-372a3777",
    ("--finetune", "--finetune-epochs", "2", "--encoder-lr", "1e-5", "--grad-accum", "2",
     "--folds", "1", "--split-seed", "7", "--max-length", "64", "--cache-dtype", "fp32"):
        "rotten_tomatoes-ac4ad949",
}
SUITE = ("name = 'gold'\n[defaults]\nseeds = 2\n[[task]]\nname = 'a'\ndata = 'a.csv'\n"
         "label_col = 'y'\n[[task]]\nname = 'b'\ndata = 'b.csv'\nmax_texts = 50\n")
RELEASED_SUITE_FOLDERS = (
    ({}, "suite-gold-7981c53d"),
    ({"poolers": ("mean", "cls"), "seeds": 3}, "suite-gold-7b7fa166"),
    ({"model": ("m",), "finetune": True}, "suite-gold-5efa490e"),
    ({"model": ("a", "b"), "layers": "all", "metric": "f1_macro"}, "suite-gold-bcb818df"),
)


def test_a_when_set_flag_joins_the_identity_only_when_on():
    """--compile (added after run folders existed): off, the run keeps the folder it had;
    on, a run of its own (its states differ from eager ones by rounding)."""
    assert "compile" not in RunConfig().results_options()
    assert RunConfig(compile=True).results_options()["compile"] is True
    from poolkit.identity import RunIdentity

    on, off = (RunIdentity.of(RunConfig(compile=flag)).folder() for flag in (True, False))
    assert on != off


class _Named(Exception):
    pass


@pytest.mark.parametrize("args", list(RELEASED_RUN_FOLDERS))
def test_a_command_names_the_run_folder_the_last_release_named(args, monkeypatch):
    def named(config, log=None):
        raise _Named(str(config.out))

    monkeypatch.setattr(cli_module, "run_config", named)
    result = CliRunner().invoke(cli_group.cli, ["--debug", "run", *args])
    assert isinstance(result.exception, _Named), result.output
    assert str(result.exception) == f"poolkit-runs/{RELEASED_RUN_FOLDERS[args]}"


@pytest.mark.parametrize("options, folder", RELEASED_SUITE_FOLDERS)
def test_a_suite_names_the_folder_the_last_release_named(options, folder, tmp_path, monkeypatch):
    (tmp_path / "s.toml").write_text(SUITE)
    monkeypatch.chdir(tmp_path)
    assert str(task_configs(read_suite(Path("s.toml")), options)[0]) == f"poolkit-runs/{folder}"


def test_the_settings_come_in_groups_and_the_plan_is_made_once(monkeypatch):
    from poolkit import config as config_module
    from poolkit.options import GROUPS

    assert {option.group for option in OPTIONS.values()} == set(GROUPS)
    config = RunConfig(data="d.csv", seeds=3, metric="f1_macro", cache_mode="tokens")
    data = config.group("data")
    assert data.data == "d.csv" and data.text_col == "text"
    assert {f.name for f in fields(data)} == {
        n for n, o in OPTIONS.items() if o.group == "data" and o.into is None}
    assert config.group("evaluation").metric == "f1_macro"
    assert config.group("cache").cache_mode == "tokens"
    with pytest.raises(FrozenInstanceError):
        data.text_col = "other"  # frozen: a stage cannot change what the others see

    calls = []
    real = config_module.resolve
    monkeypatch.setattr(config_module, "resolve", lambda *a: calls.append(a) or real(*a))
    for _ in range(3):
        assert config.plan()[1] == 5 and config.seed_list() == [0, 1, 2]
    assert len(calls) == 1
