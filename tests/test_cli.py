"""The ``poolkit`` command line through click's CliRunner: exit codes and output."""

import json
import re
import shutil

import click
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import (
    ALL_POOLERS,
    TINY_LAYER,
    assert_clean_failure,
    invoke,
    make_rows,
    modules_after_help,
    one_error_line,
    write_owned,
    write_rows,
)

from poolkit.cli import cli
from poolkit.evaluation.metrics import METRICS

EXPORT_NAMES = {  # how each format spells the pooler names
    "csv": ALL_POOLERS, "md": ALL_POOLERS, "json": ALL_POOLERS, "html": ALL_POOLERS,
    "latex": tuple(name.replace("_", r"\_") for name in ALL_POOLERS),
}



@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir):
    """One ``poolkit run`` over a 120-row CSV: ``(result, run_dir, data_path)``."""
    root = tmp_path_factory.mktemp("cli-run")
    data = root / "small.csv"
    write_rows(data)
    out = root / "run"
    result = invoke(["run", "--data", data, "--model", tiny_model_dir, "--seeds", 2,
                     "--epochs", 5, "--out", out, "--cache-dir", root / "cache"])
    return result, out, data


def test_run_end_to_end(finished_run, tiny_model_dir):
    result, out, data = finished_run
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    table = result.stdout.splitlines()
    header = table[0].split()
    assert header[:2] == ["pooler", "layer"]  # first_last_avg: 1+2
    assert {"group", "decision"} <= set(header)
    assert sorted(line.split()[0] for line in table[1:11]) == sorted(ALL_POOLERS)
    assert str(out) in result.stdout
    assert re.search(r"s total \(encoder [\d.]+s, pooling [\d.]+s, heads [\d.]+s\)", result.stdout)
    assert "labels: 0=neg, 1=pos" in result.stderr

    assert sorted(p.name for p in out.iterdir()) == [
        ".poolkit-run.json", ".poolkit-run.lock", "comparison.json", "heads", "labels.json",
        "pairs.csv", "recipe.json", "results.csv", "settings.json", "summary.csv"]
    # the default protocol: 5-fold cross-fitting, a head per pooler x fold x seed
    assert len(list((out / "heads").glob("*.json"))) == len(ALL_POOLERS) * 5 * 2
    assert len(list((out / "heads").glob("*.npy"))) == len(ALL_POOLERS) * 5 * 2
    results = pd.read_csv(out / "results.csv")
    assert len(results) == len(ALL_POOLERS) * 2
    assert sorted(zip(results["pooler"], results["layer"].astype(str), results["seed"])) == sorted(
        (p, TINY_LAYER[p], s) for p in ALL_POOLERS for s in (0, 1))
    assert set(METRICS) <= set(results.columns)
    assert (results["epochs"] <= 5).all()

    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary["pooler"]) == sorted(ALL_POOLERS)
    assert (summary["seeds"] == 2).all() and (summary["status"] == "ok").all()
    means = results.groupby("pooler")["accuracy"].mean()
    for _, row in summary.iterrows():
        assert row["accuracy_mean"] == pytest.approx(means[row["pooler"]])

    assert json.loads((out / "labels.json").read_text()) == {"0": "neg", "1": "pos"}
    settings = json.loads((out / "settings.json").read_text())
    assert settings["model"] == str(tiny_model_dir)
    assert settings["data"] == str(data)
    assert settings["seeds"] == [0, 1]
    assert settings["poolers"] == list(ALL_POOLERS)
    assert settings["folds"] == 5 and settings["scored_items"] == 120
    assert settings["split_sizes"] == {"train": 84, "validation": 12, "test": 24}  # fold 1
    assert settings["head"]["max_epochs"] == 5


def test_printed_table_fits_the_terminal_and_wide_prints_every_column(small_csv, tiny_model_dir,
                                                                      tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "72")  # what shutil.get_terminal_size reads first
    args = ["run", "--data", small_csv, "--model", tiny_model_dir, "--poolers", "cls,mean",
            "--folds", 1, "--epochs", 2, "--cache-dir", tmp_path / "cache"]
    narrow = invoke([*args, "--out", tmp_path / "narrow"])
    assert narrow.exit_code == 0, narrow.output
    lines = narrow.stdout.splitlines()
    header = lines[0].split()
    assert header[0] == "pooler" and {"group", "accuracy"} <= set(header)
    assert all(len(line) <= 72 for line in lines[:3])
    (note,) = [line for line in lines if line.startswith("(also in summary.csv")]
    hidden = note.split(": ", 1)[1].rstrip(")").split(", ")
    assert "precision_macro" in hidden and not set(hidden) & set(header)
    assert "f1_macro" in header  # the more telling metrics first
    wide = invoke([*args, "--out", tmp_path / "wide", "--wide"])
    assert wide.exit_code == 0, wide.output
    assert set(METRICS) - {"accuracy"} <= set(wide.stdout.splitlines()[0].split())
    assert "(also in summary.csv" not in wide.stdout


@pytest.mark.parametrize("fmt", ["csv", "md", "latex", "json", "html"])
def test_export_writes_each_format(finished_run, tmp_path, fmt):
    _, out, _ = finished_run
    target = tmp_path / f"table.{fmt}"
    result = invoke(["export", out, "--format", fmt, "-o", target])
    assert result.exit_code == 0, result.output
    assert str(target) in result.output
    text = target.read_text(encoding="utf-8")
    assert text.strip()
    for name in EXPORT_NAMES[fmt]:
        assert name in text, (name, fmt)
    if fmt == "json":
        records = json.loads(text)
        assert sorted(r["pooler"] for r in records) == sorted(ALL_POOLERS)
    if fmt == "csv":
        pd.testing.assert_frame_equal(pd.read_csv(target), pd.read_csv(out / "summary.csv"))


def test_run_and_export_files_get_ordinary_permissions(finished_run, tmp_path):
    import os

    _, out, _ = finished_run
    umask = os.umask(0o022)
    os.umask(umask)
    expected = 0o666 & ~umask
    target = tmp_path / "table.md"
    assert invoke(["export", out, "--format", "md", "-o", target]).exit_code == 0
    files = [p for p in out.rglob("*") if p.is_file()]
    modes = {p.name: p.stat().st_mode & 0o777 for p in [*files, target]}
    assert modes == {name: expected for name in modes}


def test_export_to_stdout_and_per_seed_table(finished_run):
    _, out, _ = finished_run
    result = invoke(["export", out, "--format", "csv", "--table", "results"])
    assert result.exit_code == 0, result.output
    from io import StringIO

    pd.testing.assert_frame_equal(pd.read_csv(StringIO(result.stdout)),
                                  pd.read_csv(out / "results.csv"))


@pytest.mark.parametrize("args, culprit", [
    (["export", "{tmp}/not-a-run", "--format", "csv"], "not-a-run"),
    (["export", "{run}", "--format", "xyz"], "xyz"),
    (["export", "{run}", "--format", "csv", "-o", "{tmp}/no-such-dir/t.csv"], "no-such-dir"),
])
def test_export_errors(finished_run, tmp_path, args, culprit):
    args = [a.format(tmp=tmp_path, run=finished_run[1]) for a in args]
    assert_clean_failure(invoke(args), culprit)


GARBLED = {
    "an unterminated quote": '"pooler,layer\nmean,2\n',
    "columns that are not poolkit's": "a,b\n1,2\n",
    "binary noise": "\x00\x01\x02\n\xff",
}


@pytest.mark.parametrize("fmt", ["md", "csv"])
@pytest.mark.parametrize("garble", list(GARBLED))
def test_export_of_a_garbled_summary_is_one_line(finished_run, tmp_path, garble, fmt):
    run = tmp_path / "run"
    shutil.copytree(finished_run[1], run)
    write_owned(run, {"summary.csv": GARBLED[garble]})  # as if poolkit had written it
    result = invoke(["export", run, "--format", fmt])
    if fmt == "csv" and garble != "an unterminated quote":
        return  # csv passes cells through as they are: nothing to misread
    assert_clean_failure(result, str(run / "summary.csv"), "was it written by poolkit run?")
    assert len([line for line in result.output.splitlines() if line.startswith("Error:")]) == 1


@pytest.mark.parametrize("name, table", [("summary.csv", "summary"), ("pairs.csv", "pairs"),
                                         ("recipe.json", "recipe")])
def test_a_file_edited_after_the_run_is_refused_before_it_is_read(finished_run, tmp_path, name,
                                                                  table):
    run = tmp_path / "run"
    shutil.copytree(finished_run[1], run)
    with (run / name).open("a") as handle:
        handle.write("\n")
    result = invoke(["export", run, "--format", "md", "--table", table])
    one_error_line(result, str(run / name), "changed after poolkit wrote it")


def _csv(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def _rows_csv(path, columns=("text", "label"), labels=("pos", "neg")):
    rows = [(t, labels[i % len(labels)]) for i, (t, _) in enumerate(make_rows(40))]
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False)
    return path


BAD_INPUTS = {
    # case: (make the data file (tmp) -> path, extra args, culprits in the message)
    "missing file": (lambda tmp: tmp / "nowhere.csv", [], ["nowhere.csv"]),
    "missing text column": (lambda tmp: _rows_csv(tmp / "d.csv", ("review", "label")), [],
                            ["'text'", "d.csv"]),
    "missing label column": (lambda tmp: _rows_csv(tmp / "d.csv", ("text", "sentiment")), [],
                             ["'label'", "d.csv"]),
    "header only": (lambda tmp: _csv(tmp / "header.csv", "text,label\n"), [], ["header.csv"]),
    "zero bytes": (lambda tmp: _csv(tmp / "zero.csv", ""), [], ["zero.csv"]),
    "single label": (lambda tmp: _rows_csv(tmp / "d.csv", labels=("pos",)), [],
                     ["'label'", "pos"]),
    "unknown pooler": (lambda tmp: _rows_csv(tmp / "d.csv"), ["--poolers", "mean,nope"],
                       ["'nope'"]),
    "unknown extension": (lambda tmp: _rows_csv(tmp / "d.xyz"), [], ["d.xyz"]),
    "not utf-8": (lambda tmp: (tmp / "latin.csv").write_bytes(b"text,label\ncaf\xe9,pos\n")
                  and tmp / "latin.csv", [], ["latin.csv", "UTF-8"]),
    "labels miss one": (lambda tmp: _rows_csv(tmp / "d.csv"), ["--labels", "pos"], ["neg"]),
    "zero seeds": (lambda tmp: _rows_csv(tmp / "d.csv"), ["--seeds", "0"], ["--seeds"]),
    "max length too long": (lambda tmp: _rows_csv(tmp / "d.csv"), ["--max-length", "999"],
                            ["999"]),
    "negative rope": (lambda tmp: _rows_csv(tmp / "d.csv"), ["--rope", "-0.01"], ["--rope"]),
    "unseen test label": (lambda tmp: _rows_csv(tmp / "d.csv"),
                          ["--test-data", "{tmp}/t.csv"], ["t.csv", "meh"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_run_bad_input(tiny_model_dir, tmp_path, case):
    make, extra, culprits = BAD_INPUTS[case]
    _rows_csv(tmp_path / "t.csv", labels=("pos", "meh"))
    data = make(tmp_path)
    extra = [a.format(tmp=tmp_path) for a in extra]
    result = invoke(["run", "--data", data, "--model", tiny_model_dir, "--seeds", 1,
                     "--epochs", 1, "--out", tmp_path / "run", *extra])
    assert_clean_failure(result, *culprits)
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1, result.output  # one line
    assert not (tmp_path / "run").exists()


def test_run_with_explicit_label_order_and_test_file(small_csv, tiny_model_dir, tmp_path):
    test_file = tmp_path / "test.tsv"
    pd.DataFrame(make_rows(20, seed=5), columns=["text", "label"]).to_csv(
        test_file, sep="\t", index=False)
    out = tmp_path / "run"
    result = invoke(["run", "--data", small_csv, "--test-data", test_file, "--labels", "pos,neg",
                     "--model", tiny_model_dir, "--poolers", "mean", "--seeds", 1,
                     "--epochs", 2, "--out", out])
    assert result.exit_code == 0, result.output
    assert "labels: 0=pos, 1=neg" in result.stderr
    assert json.loads((out / "labels.json").read_text()) == {"0": "pos", "1": "neg"}
    settings = json.loads((out / "settings.json").read_text())
    assert settings["split_sizes"]["test"] == 20
    assert settings["split_sizes"]["train"] + settings["split_sizes"]["validation"] == 120


@pytest.mark.slow
def test_run_uses_cache_dir_option(small_csv, tiny_model_dir, tmp_path):
    cache = tmp_path / "my-cache"
    args = ["run", "--data", small_csv, "--model", tiny_model_dir, "--poolers", "cls",
            "--seeds", 1, "--epochs", 1, "--cache-dir", cache]
    first = invoke([*args, "--out", tmp_path / "a"])
    second = invoke([*args, "--out", tmp_path / "b"])
    assert first.exit_code == 0 and second.exit_code == 0, second.output
    assert "cache hit" not in first.stderr and "cache hit" in second.stderr
    assert str(cache) in second.stderr
    assert json.loads((tmp_path / "b" / "settings.json").read_text())["encoder_ran"] is False


@pytest.mark.slow
def test_run_default_out_dir_is_named_by_the_command_and_reused(small_csv, tiny_model_dir, tmp_path,
                                                                monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["run", "--data", small_csv, "--model", tiny_model_dir, "--poolers", "cls",
            "--seeds", 1, "--epochs", 1]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "poolkit-runs").iterdir()
    assert re.fullmatch(r"small-[0-9a-f]{8}", run_dir.name)
    assert (run_dir / "results.csv").is_file()
    assert str(run_dir.relative_to(tmp_path)) in result.stdout

    again = invoke(args)  # the same command: the same directory, its finished heads reused
    assert again.exit_code == 0, again.output
    assert [p.name for p in (tmp_path / "poolkit-runs").iterdir()] == [run_dir.name]
    assert "reusing 5 finished heads" in again.stderr

    other = invoke([*args[:-2], "--epochs", 2])  # another command: another directory
    assert other.exit_code == 0, other.output
    assert len(list((tmp_path / "poolkit-runs").iterdir())) == 2


@pytest.mark.slow
def test_output_only_options_reuse_the_run_folder_and_train_nothing(small_csv, tiny_model_dir,
                                                                    tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["run", "--data", small_csv, "--model", tiny_model_dir, "--poolers", "cls,mean",
            "--seeds", 2, "--epochs", 2]
    assert invoke(args).exit_code == 0
    (run_dir,) = (tmp_path / "poolkit-runs").iterdir()
    results = (run_dir / "results.csv").read_bytes()
    for extra in (["--plot", "svg"], ["--predictions"], ["--pooler-timeout", "30"],
                  ["--cache-dir", tmp_path / "other-cache"], ["--rope", "0.2"]):
        again = invoke([*args, *extra])
        assert again.exit_code == 0, again.output
        assert [p.name for p in (tmp_path / "poolkit-runs").iterdir()] == [run_dir.name], extra
        assert "reusing 20 finished heads" in again.stderr, extra
        assert (run_dir / "results.csv").read_bytes() == results, extra


def test_run_ends_with_its_verdict_in_words_from_the_decisions(finished_run):
    """The closing sentence names the best feature set and, by their decisions against it
    (summary.csv's ``decision``, from pairs.csv's), what it beats, what is practically
    equivalent to it and what is not told apart yet."""
    result, out, _ = finished_run
    summary = pd.read_csv(out / "summary.csv")
    pairs = pd.read_csv(out / "pairs.csv")
    assert set(pairs["decision"]) <= {"a better", "b better", "a better (within ROPE)",
                                      "b better (within ROPE)", "equivalent", "inconclusive"}
    best = f"{summary['pooler'].iloc[0]}@{summary['layer'].iloc[0]}"
    assert summary["decision"].iloc[0] == "best"
    closing = result.stdout.strip().splitlines()[-1]
    assert closing.startswith(f"Best on this task: {best} (accuracy ")
    for row in summary.iloc[1:].itertuples():
        name = f"{row.pooler}@{row.layer}"
        said = {"worse": "beats", "equivalent": "practically equivalent",
                "inconclusive": "cannot yet be told apart"}.get(row.decision.split(" (")[0])
        assert said and name in closing.split(said, 1)[1], (row.decision, closing)
    settings = json.loads((out / "settings.json").read_text())
    assert settings["rope"] == 0.01


def test_version():
    result = CliRunner().invoke(cli, ["--version"], prog_name="poolkit")
    assert result.exit_code == 0
    import poolkit

    assert result.output.strip() == f"poolkit, version {poolkit.__version__}"
    assert poolkit.__version__ == "0.3.0"


def test_help_is_fast_and_does_not_import_torch():
    assert modules_after_help([], ("torch", "transformers"), ("run", "export")) == "[]"


def test_help_lists_the_commands_without_importing_the_library():
    """``poolkit --help`` imports the group's own three modules, nothing of the library
    (nor numpy); ``poolkit run --help`` loads the commands."""
    library = ("numpy", "poolkit.commands", "poolkit.api", "poolkit.pipeline", "poolkit.config")
    assert modules_after_help([], library, ("run", "export-model", "plugins")) == "[]"
    assert modules_after_help(["run"], library, ("--model",)) == repr(sorted(library))


def test_the_group_lists_each_command_with_its_own_help():
    import poolkit.cli as group
    import poolkit.commands as commands

    defined = {c.name: c for c in vars(commands).values() if isinstance(c, click.Command)}
    assert sorted(defined) == sorted(group.COMMANDS)
    for name, command in defined.items():
        assert group.COMMANDS[name] == command.get_short_help_str(10**6), name
        assert group.cli.get_command(None, name) is command
    assert group.cli.get_command(None, "nope") is None


def test_markdown_exports_escape_what_markdown_reads_as_structure(tmp_path, tiny_model_dir):
    """Labels with a pipe, a line break and raw HTML: every exported row has the header's
    number of cells, no raw tag passes through, and the exported model's README table holds
    one row per label."""
    labels = ["[x]|y", "two\nlines", "<script>alert(1)</script>"]
    rows = [(text, labels[i % 3]) for i, (text, _) in enumerate(make_rows(90))]
    data = tmp_path / "odd.csv"
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(data, index=False)
    out = tmp_path / "run"
    result = invoke(["run", "--data", data, "--model", tiny_model_dir, "--poolers", "mean",
                     "--seeds", 1, "--epochs", 2, "--folds", 1, "--predictions", "--out", out])
    assert result.exit_code == 0, result.output

    def cells(line):
        return len(re.findall(r"(?<!\\)\|", line))

    for table in ("predictions", "summary"):
        text = invoke(["export", out, "--format", "md", "--table", table]).stdout
        lines = text.strip().splitlines()
        assert len({cells(line) for line in lines}) == 1, text
        assert "<script>" not in text
        assert "&lt;script&gt;" in text or table == "summary"
    model = tmp_path / "model"
    assert invoke(["export-model", out, "--format", "sentence-transformers", "-o",
                   model]).exit_code == 0
    readme = (model / "README.md").read_text()
    table = [line for line in readme.splitlines() if line.startswith("| ") and "id" not in line]
    assert len(table) == 3 and {cells(line) for line in table} == {3}
    assert "<script>" not in readme
