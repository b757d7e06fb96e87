"""Names survive poolkit's own read-backs (issue 27, class 2).

A run whose poolers, labels and models are named like things pandas would infer
(``NA``, ``null``, ``nan``, ``1e3``, ``001``, ``True``) is written, then read back by
every command that reads its tables: ``export`` to every format, ``plot``, a resumed
re-run, ``predict`` and ``poolkit.load``. Each name must come back as written.
"""

import json
import re
import shutil

import pandas as pd
import pytest
from conftest import invoke, make_rows

import poolkit
from poolkit.heads.base import HeadConfig
from poolkit.winner.plot import read_summary

POOLERS = ("NA", "null", "nan", "1e3", "001", "True")
LABELS = {"neg": "NA", "pos": "001"}
MODELS = ("1e3", "None")
PLUGIN = '''
from poolkit import Pooler, hookimpl, ops


def make(pooler_name, shift):
    class Odd(Pooler):
        name = pooler_name

        def pool(self, hidden, mask):
            return ops.masked_mean(hidden, mask).to(hidden.dtype) + shift

    return Odd()


@hookimpl
def register_poolers(register):
    for shift, name in enumerate(%r):
        register(make(name, shift))
''' % (POOLERS,)


def _options(folder):
    return dict(data=folder / "data.csv", model=[str(folder / m) for m in MODELS],
                poolers=POOLERS, folds=2, seeds=1, cache_dtype="fp32", out=folder / "run",
                cache_dir=folder / "cache", head=HeadConfig(max_epochs=5, patience=2),
                plugins_dir=folder / "plugins", predictions=True)


@pytest.fixture(scope="module")
def odd(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("names")
    (folder / "plugins").mkdir()
    (folder / "plugins" / "odd.py").write_text(PLUGIN)
    for name in MODELS:
        shutil.copytree(tiny_model_dir, folder / name)
    rows = [(text, LABELS[label]) for text, label in make_rows(60)]
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(folder / "data.csv", index=False)
    poolkit.run(**_options(folder))
    return folder


def _as_written(path, column):
    return pd.read_csv(path, dtype=str, keep_default_na=False)[column].tolist()


def _sets(run):
    """The feature set ids, as a run with several models names them (``1e3:NA@2``)."""
    columns = [_as_written(run / "summary.csv", c) for c in ("model", "pooler", "layer")]
    return {f"{m}:{p}@{l}" for m, p, l in zip(*columns)}


def test_the_run_wrote_the_names_as_given(odd):
    run = odd / "run"
    assert set(_as_written(run / "summary.csv", "pooler")) == set(POOLERS)
    assert set(_as_written(run / "summary.csv", "model")) == set(MODELS)
    assert set(_as_written(run / "predictions.csv", "label")) == set(LABELS.values())


@pytest.mark.parametrize("table,columns", [
    ("results", ("model", "pooler", "layer")), ("summary", ("model", "pooler", "layer")),
    ("pairs", ("a", "b")), ("predictions", ("model", "pooler", "label", "predicted"))])
def test_csv_and_json_exports_keep_every_name(odd, table, columns):
    run = odd / "run"
    csv = invoke(["export", run, "--table", table, "--format", "csv"])
    assert csv.exit_code == 0, csv.output
    exported = pd.read_csv(pd.io.common.StringIO(csv.output), dtype=str, keep_default_na=False)
    records = json.loads(invoke(["export", run, "--table", table, "--format", "json"]).output)
    for column in columns:
        written = _as_written(run / f"{table}.csv", column)
        assert exported[column].tolist() == written, column
        assert [record[column] for record in records] == written, column


@pytest.mark.parametrize("fmt", ["md", "latex", "html"])
@pytest.mark.parametrize("table", ["results", "summary", "pairs"])
def test_display_exports_show_every_name(odd, table, fmt):
    run = odd / "run"
    result = invoke(["export", run, "--table", table, "--format", fmt])
    assert result.exit_code == 0, result.output
    cells = {cell.strip() for cell in re.split(r"[|&\n]|<t[dh][^>]*>|</t[dh]>", result.output)}
    names = set(POOLERS) if table != "pairs" else {
        *_as_written(run / "pairs.csv", "a"), *_as_written(run / "pairs.csv", "b")}
    for name in names:
        assert name.replace("_", r"\_") in cells, (name, result.output[:2000])


def test_plot_reads_the_names_as_written(odd):
    summary = read_summary(odd / "run")
    assert set(summary["pooler"]) == set(POOLERS)
    assert set(summary["model"]) == set(MODELS)
    assert summary["accuracy_mean"].dtype.kind == "f"
    result = invoke(["plot", odd / "run", "--format", "svg"])
    assert result.exit_code == 0, result.output


def test_a_rerun_reuses_every_head_and_writes_the_same_results(odd):
    before = (odd / "run" / "results.csv").read_bytes()
    again = poolkit.run(**_options(odd))
    assert (odd / "run" / "results.csv").read_bytes() == before
    assert set(again.summary["pooler"]) == set(POOLERS)


@pytest.mark.parametrize("pooler", ["NA", "001", "True"])
def test_predict_and_load_find_a_set_by_its_name(odd, pooler, tmp_path):
    run = odd / "run"
    set_id = f"{MODELS[1]}:{pooler}@{_as_written(run / 'summary.csv', 'layer')[0]}"
    out = tmp_path / "p.csv"
    texts = tmp_path / "texts.csv"
    pd.DataFrame({"text": ["good fun movie", "awful dull plot"]}).to_csv(texts, index=False)
    result = invoke(["predict", run, "--set", set_id, "--data", texts, "-o", out])
    assert result.exit_code == 0, result.output
    assert set(_as_written(out, "predicted")) <= set(LABELS.values())
    assert f"predictions of {set_id} to" in result.output
    classifier = poolkit.load(run, set_id)
    assert set(classifier.predict(["good fun movie"])) <= set(LABELS.values())
