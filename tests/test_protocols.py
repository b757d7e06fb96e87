"""Protocols: cross-fitting (the default), one split, and the published senteval / mteb
probes; --baseline, --metric, and the note about installed poolers joining a run."""

import json
import shutil
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import PLUGINS_DIR, invoke, write_rows

# sklearn's "y_prob values do not sum to one" (float32 probe rows) must not come back
pytestmark = pytest.mark.filterwarnings("error::UserWarning")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("protocols") / "data.csv"
    write_rows(path, 150)
    return path


def _run(data, model, out, *extra, poolers="cls,mean,attention"):
    result = invoke(["run", "--data", data, "--model", model, "--poolers", poolers,
                     "--epochs", 3, "--predictions", "--out", out, *extra])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow
def test_cross_fitting_scores_every_item_once_per_feature_set_and_seed(data, tiny_model_dir,
                                                                       tmp_path):
    out = tmp_path / "run"
    result = _run(data, tiny_model_dir, out, "--seeds", 2, "--folds", 3)
    assert "3-fold cross-fitting" in result.stderr and "every one of the 150 items" in result.stderr
    predictions = pd.read_csv(out / "predictions.csv")
    for (pooler, seed), items in predictions.groupby(["pooler", "seed"]):
        assert sorted(items["row"]) == list(range(1, 151)), (pooler, seed)  # each item once
        assert sorted(items["fold"].unique()) == [0, 1, 2]
    settings = json.loads((out / "settings.json").read_text())
    assert (settings["folds"], settings["scored_items"], settings["protocol"]) == (3, 150, "default")
    # the folds' test parts are stratified: each fold holds both labels about equally
    for fold, items in predictions[predictions["seed"] == 0].groupby(["pooler", "fold"]):
        assert abs((items["label"] == "pos").mean() - 0.5) < 0.1


def test_one_fold_is_the_single_split(data, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    result = _run(data, tiny_model_dir, out, "--folds", 1)
    assert "split: test 15, validation 15, train 120" in result.stderr
    assert len(pd.read_csv(out / "predictions.csv")) == 15 * 3


@pytest.mark.slow
@pytest.mark.parametrize("protocol, seeds, train_rows", [("senteval", 1, None), ("mteb", 10, 16)])
def test_published_protocols_run_scikit_learn_probes(data, tiny_model_dir, tmp_path, protocol,
                                                     seeds, train_rows):
    out = tmp_path / protocol
    result = _run(data, tiny_model_dir, out, "--protocol", protocol)
    assert f"protocol {protocol}:" in result.stderr
    assert "trainable pooler(s) attention left out" in result.stderr
    results = pd.read_csv(out / "results.csv")
    assert sorted(results["pooler"].unique()) == ["cls", "mean"]
    assert sorted(results["seed"].unique()) == list(range(seeds))
    assert (results["epochs"] == 0).all()  # scikit-learn probes have no epochs
    settings = json.loads((out / "settings.json").read_text())
    assert settings["protocol"] == protocol
    assert settings["folds"] == (10 if protocol == "senteval" else 1)
    pairs = pd.read_csv(out / "pairs.csv")
    assert len(pairs) == 1 and "accuracy_p_holm" in pairs


def test_mteb_probe_is_sklearn_logistic_regression_on_eight_items_per_label(tiny_model_dir):
    """The mteb recipe, rebuilt by hand: the same items drawn, the same probe."""
    from sklearn.linear_model import LogisticRegression

    from poolkit.heads.base import HeadConfig, HeadTask
    from poolkit.heads.probes import ProbeHeads, undersample

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    x = rng.normal(size=(200, 6)) + y[:, None]
    splits = {"train": np.arange(0, 150), "validation": np.arange(150, 170),
              "test": np.arange(170, 200)}
    task = HeadTask(y, splits, 3, HeadConfig())

    class Set:
        id, trainable = "f@1", False

    (head,) = ProbeHeads({"f@1": x}, "mteb").train(task, [(Set, [4])])
    rows = undersample(y, np.arange(170), 8, 4)
    assert len(rows) == 24 and all((y[rows] == label).sum() == 8 for label in range(3))
    expected = LogisticRegression(max_iter=100, random_state=4).fit(x[rows], y[rows])
    np.testing.assert_allclose(head.probabilities, expected.predict_proba(x[170:]))


@pytest.mark.slow
def test_baseline_compares_every_pooler_with_one(data, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    result = _run(data, tiny_model_dir, out, "--baseline", "cls", "--folds", 3)
    pairs = pd.read_csv(out / "pairs.csv")
    assert sorted(pairs["a"]) == ["attention@2", "mean@2"] and set(pairs["b"]) == {"cls@2"}
    summary = pd.read_csv(out / "summary.csv").set_index("pooler")
    assert summary.loc["cls", "vs_baseline"] == "baseline"
    assert set(summary["vs_baseline"]) <= {"baseline", "better", "worse", "not different"}
    assert "group" not in summary.columns
    assert "vs baseline" in result.stdout


@pytest.mark.slow
def test_metric_chooses_the_ranking_and_the_groups(data, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    result = _run(data, tiny_model_dir, out, "--metric", "log_loss", "--folds", 3)
    summary = pd.read_csv(out / "summary.csv")
    assert summary["log_loss_mean"].is_monotonic_increasing  # lower is better: first
    pairs = pd.read_csv(out / "pairs.csv")
    assert (pairs["significant"] == (pairs["log_loss_p_holm"] < 0.05)).all()
    assert "log_loss (95% CI)" in result.stdout.splitlines()[0]


def test_installed_poolers_joining_a_default_run_are_named(data, tiny_model_dir, tmp_path,
                                                          monkeypatch):
    site = tmp_path / "site"
    (site / "poolkit_test_joined-0.1.dist-info").mkdir(parents=True)
    (site / "poolkit_test_joined-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: poolkit-test-joined\nVersion: 0.1\n")
    (site / "poolkit_test_joined-0.1.dist-info" / "entry_points.txt").write_text(
        "[poolkit]\njoined = poolkit_test_joined_first_last\n")
    shutil.copy(PLUGINS_DIR / "first_last.py", site / "poolkit_test_joined_first_last.py")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "poolkit_test_joined_first_last", raising=False)
    from poolkit.pipeline.stages import resolve_poolers

    messages = []
    chosen = resolve_poolers(None, log=messages.append)
    assert "first_last" in chosen.selected
    assert any("first_last from installed plugins join this run" in m for m in messages), messages
    messages.clear()
    resolve_poolers(["cls", "first_last"], log=messages.append)  # chosen by name: no note
    assert not [m for m in messages if "join this run" in m]
