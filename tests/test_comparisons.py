"""Comparing feature sets under the default protocol (5-fold cross-fitting): intervals
and groups in summary.csv, pairs.csv, the saved probabilities, per-item
predictions.csv, the exports and the recipe card, and a resumed run reproducing its
tables byte for byte.

Everything is checked against the run directory's own files and independent
computations (Holm by hand, accuracies from the saved probabilities, the folds
rebuilt from the data file, the data file read back with pandas, sha256 of its
bytes).
"""

import hashlib
import itertools
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import invoke, make_rows

from poolkit.evaluation.metrics import METRICS

POOLERS = "cls,mean,first_last_avg,attention"
#: Feature sets of POOLERS with --layers -2..-1 on the 2-layer tiny model.
IDS = ["cls@1", "cls@2", "mean@1", "mean@2", "first_last_avg@1+2", "attention@1", "attention@2"]
SEEDS = 3
FOLDS = 5  # the default protocol's
HEX64 = re.compile(r"[0-9a-f]{64}")


def read(path):
    """A run table with its layer column as text ("2", "1+2")."""
    return pd.read_csv(path, dtype={"layer": str})


def data_rows():
    """make_rows() with blank texts at a few places: skipped rows shift the data rows."""
    rows = make_rows(120, seed=4)
    for at in (3, 50, 51, 97):
        rows.insert(at, ("   " if at % 2 else "", "pos"))
    return rows


@pytest.fixture(scope="module")
def main_run(tmp_path_factory, tiny_model_dir):
    """One CLI run: 4 poolers on layers 1 and 2, 3 seeds, --predictions."""
    root = tmp_path_factory.mktemp("comparisons")
    data = root / "data.csv"
    pd.DataFrame(data_rows(), columns=["text", "label"]).to_csv(data, index=False)
    out = root / "run"
    args = ["run", "--data", data, "--model", tiny_model_dir, "--poolers", POOLERS,
            "--layers", "-2..-1", "--seeds", SEEDS, "--epochs", 5, "--predictions",
            "--cache-dir", root / "cache"]
    result = invoke([*args, "--out", out])
    assert result.exit_code == 0, result.output
    return dict(root=root, data=data, out=out, args=args, result=result)


@pytest.fixture(scope="module")
def tables(main_run):
    out = main_run["out"]
    return dict(results=read(out / "results.csv"), summary=read(out / "summary.csv"),
                pairs=pd.read_csv(out / "pairs.csv"),
                predictions=read(out / "predictions.csv"),
                labels=json.loads((out / "labels.json").read_text()))


def feature_id(frame):
    return frame["pooler"] + "@" + frame["layer"]


@pytest.fixture(scope="module")
def dataset(main_run):
    from poolkit.data.dataset import load_dataset

    return load_dataset(main_run["data"], folds=FOLDS)


@pytest.fixture(scope="module")
def y_test(dataset):
    """The labels of the scored items: every item, each scored out of fold."""
    assert len(dataset.scored) == len(dataset.texts) == 120
    return dataset.labels[dataset.scored]


# ---------------------------------------------------------------- summary.csv

@pytest.mark.slow
def test_summary_means_and_stds_are_over_seeds_and_intervals_over_items_and_seeds(tables,
                                                                                  y_test):
    from poolkit.evaluation.stats import compare

    results, summary, predictions = tables["results"], tables["summary"], tables["predictions"]
    assert sorted(feature_id(summary)) == sorted(IDS)
    assert len(results) == len(IDS) * SEEDS
    names = [tables["labels"][str(i)] for i in range(len(tables["labels"]))]
    probabilities = {
        f"{pooler}@{layer}": np.stack([g.sort_values("row")[[f"p_{n}" for n in names]].to_numpy()
                                       for _, g in items.groupby("seed")])
        for (pooler, layer), items in predictions.groupby(["pooler", "layer"])}
    order = predictions[predictions["seed"] == 0].drop_duplicates("row").sort_values("row")
    y = order["label"].map(names.index).to_numpy()
    folds = order["fold"].to_numpy() if "fold" in order else None
    intervals = compare(probabilities, y, seed=0, folds=folds).intervals  # the run's, again
    for _, row in summary.iterrows():
        per_seed = results[(results["pooler"] == row["pooler"]) & (results["layer"] == row["layer"])]
        assert sorted(per_seed["seed"]) == list(range(SEEDS))
        assert row["seeds"] == SEEDS
        for metric in METRICS:
            values = per_seed[metric].to_numpy(dtype=float)
            where = f"{row['pooler']}@{row['layer']} {metric}"
            assert row[f"{metric}_mean"] == pytest.approx(values.mean(), rel=1e-9, abs=1e-12), where
            assert row[f"{metric}_std"] == pytest.approx(values.std(ddof=1), rel=1e-9,
                                                         abs=1e-12), where
            low, high = row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]
            assert (low, high) == pytest.approx(intervals[f"{row['pooler']}@{row['layer']}"][metric])
            lowest, highest = {"mcc": (-1, 1), "log_loss": (0, np.inf)}.get(metric, (0, 1))
            assert lowest <= low <= high <= highest, where
            assert low <= row[f"{metric}_mean"] + 1e-9 and row[f"{metric}_mean"] <= high + 1e-9
    # 120 items: the intervals are wide enough to hold the item sampling
    width = summary["accuracy_ci_high"] - summary["accuracy_ci_low"]
    assert (width > 0.03).all()


def test_summary_groups_rank_from_the_best(tables):
    summary = tables["summary"]
    assert "group" in summary.columns
    groups = summary["group"]
    assert pd.api.types.is_integer_dtype(groups)
    assert (groups >= 1).all()
    assert groups.loc[summary["accuracy_mean"].idxmax()] == 1
    ranked = summary.sort_values("accuracy_mean", ascending=False, kind="stable")
    assert ranked["group"].is_monotonic_increasing
    assert list(summary["accuracy_mean"]) == sorted(summary["accuracy_mean"], reverse=True)


# ---------------------------------------------------------------- pairs.csv

def test_pairs_cover_every_pair_once(tables):
    pairs, summary = tables["pairs"], tables["summary"]
    n = len(IDS)
    assert len(pairs) == n * (n - 1) // 2
    got = sorted(tuple(sorted(p)) for p in zip(pairs["a"], pairs["b"]))
    assert got == sorted(tuple(sorted(p)) for p in itertools.combinations(IDS, 2))
    for column in ("accuracy_p", "accuracy_p_holm", "p_mcnemar", "p_mcnemar_holm"):
        assert pairs[column].between(0, 1).all(), column
    assert (pairs["accuracy_p_holm"] >= pairs["accuracy_p"]).all()
    assert (pairs["p_mcnemar_holm"] >= pairs["p_mcnemar"]).all()
    assert (pairs["accuracy_a"] >= pairs["accuracy_b"]).all()
    for metric in METRICS:  # every metric has its difference, interval and p-values
        mean = dict(zip(feature_id(summary), summary[f"{metric}_mean"]))
        for _, row in pairs.iterrows():
            assert row[f"{metric}_a"] == pytest.approx(mean[row["a"]], abs=1e-12), row["a"]
            assert row[f"{metric}_b"] == pytest.approx(mean[row["b"]], abs=1e-12), row["b"]
            assert row[f"{metric}_diff"] == pytest.approx(row[f"{metric}_a"] - row[f"{metric}_b"],
                                                          abs=1e-12)
            assert row[f"{metric}_low"] <= row[f"{metric}_high"]
            assert 0 <= row[f"{metric}_p"] <= row[f"{metric}_p_holm"] <= 1


def holm_by_hand(p):
    m = len(p)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda k: p[k])):
        running = max(running, min(1.0, p[i] * (m - rank)))
        adjusted[i] = running
    return adjusted


def test_pairs_holm_adjustment_by_hand(tables):
    pairs = tables["pairs"]
    for raw, adjusted in [(f"{m}_p", f"{m}_p_holm") for m in METRICS] + [
            ("p_mcnemar", "p_mcnemar_holm")]:
        expected = holm_by_hand(pairs[raw].tolist())
        np.testing.assert_allclose(pairs[adjusted], expected, rtol=1e-12, atol=0)
    assert (pairs["significant"] == (pairs["accuracy_p_holm"] < 0.05)).all()


# ---------------------------------------------------------------- saved probabilities

def test_saved_probabilities_give_each_heads_accuracy(main_run, tables, dataset, y_test):
    """Each fold's head predicts that fold's held-out items; put together they are the
    out-of-fold predictions every result row is scored on."""
    heads = main_run["out"] / "heads"
    results = tables["results"]
    files = sorted(heads.glob("*.npy"))
    assert len(files) == len(IDS) * FOLDS * SEEDS
    combined, epochs = {}, {}
    for file in files:
        probabilities = np.load(file, allow_pickle=False)
        saved = json.loads(file.with_suffix(".json").read_text())["head"]
        fold = dataset.folds[saved["fold"]]
        assert probabilities.shape == (len(fold["test"]), len(tables["labels"]))
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=0, atol=1e-9)
        assert (probabilities >= 0).all()
        key = (saved["feature_set"], saved["seed"])
        combined.setdefault(key, np.full((len(y_test), 2), np.nan))[fold["test"]] = probabilities
        epochs.setdefault(key, []).append(saved["best_epoch"])
    assert len(combined) == len(IDS) * SEEDS
    for (feature_set, seed), probabilities in combined.items():
        assert not np.isnan(probabilities).any(), "an item without an out-of-fold prediction"
        pooler, _, layer = feature_set.rpartition("@")
        match = results[(results["pooler"] == pooler) & (results["layer"] == layer)
                        & (results["seed"] == seed)]
        assert len(match) == 1, feature_set
        assert match["best_epoch"].iloc[0] == pytest.approx(np.mean(epochs[feature_set, seed]),
                                                            abs=0.05)
        accuracy = float(np.mean(probabilities.argmax(axis=1) == y_test))
        assert match["accuracy"].iloc[0] == pytest.approx(accuracy, abs=1e-12), feature_set


# ---------------------------------------------------------------- predictions.csv

def test_predictions_table_layout_and_consistency(main_run, tables, y_test):
    predictions, results, labels = tables["predictions"], tables["results"], tables["labels"]
    names = [labels[str(i)] for i in range(len(labels))]
    assert names == ["neg", "pos"]
    assert list(predictions.columns) == ["pooler", "layer", "encoder", "seed", "fold", "file", "row",
                                         "text", "label", "predicted", *[f"p_{n}" for n in names]]
    assert len(predictions) == len(y_test) * len(IDS) * SEEDS
    assert not predictions.duplicated(["pooler", "layer", "seed", "row"]).any()
    assert (predictions["file"] == str(main_run["data"])).all()
    probs = predictions[[f"p_{n}" for n in names]].to_numpy()
    assert (predictions["predicted"] == np.array(names)[probs.argmax(axis=1)]).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    for (pooler, layer, seed), items in predictions.groupby(["pooler", "layer", "seed"]):
        assert len(items) == len(y_test)
        # the test items in the split's order, their labels
        assert (items["label"].map(names.index).to_numpy() == y_test).all()
        accuracy = float((items["predicted"] == items["label"]).mean())
        row = results[(results["pooler"] == pooler) & (results["layer"] == layer)
                      & (results["seed"] == seed)]
        assert row["accuracy"].iloc[0] == pytest.approx(accuracy, abs=1e-12), (pooler, layer, seed)
        for fold, held_out in items.groupby("fold"):
            saved = np.load(main_run["out"] / "heads" / f"{pooler}@{layer}-fold{fold}-seed{seed}.npy")
            np.testing.assert_allclose(held_out[[f"p_{n}" for n in names]].to_numpy(), saved,
                                       rtol=1e-12, atol=0)


def test_prediction_rows_point_into_the_data_file(main_run, tables):
    predictions = tables["predictions"]
    source = pd.read_csv(main_run["data"], keep_default_na=False)
    assert len(source) == 124  # the blank rows are in the file (and skipped by the run)
    rows = predictions["row"].to_numpy()
    assert rows.min() >= 1 and rows.max() <= len(source)
    assert (predictions["text"].to_numpy() == source["text"].to_numpy()[rows - 1]).all()
    assert (predictions["label"].to_numpy() == source["label"].to_numpy()[rows - 1]).all()
    # some test item sits after a skipped blank row: rows are file rows, not text indices
    assert (rows > 4).any()


@pytest.fixture(scope="module")
def label_order_runs(tmp_path_factory, tiny_model_dir):
    """The same separable data run with the default label order and with --labels pos,neg.

    Long texts are 'pos', short ones 'neg': learnable whatever the tokens are,
    so every head gets every test item right and p_<label> is checkable by name.
    """
    import random

    root = tmp_path_factory.mktemp("label-order")
    rng = random.Random(1)
    words = "good great fun loved fine bad awful dull hated boring".split()
    rows = []
    for i in range(80):
        long = i % 2 == 0
        rows.append((" ".join(rng.choices(words, k=rng.randint(9, 14) if long else rng.randint(1, 4))),
                     "pos" if long else "neg"))
    data = root / "separable.csv"
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(data, index=False)
    args = ["run", "--data", data, "--model", tiny_model_dir, "--poolers", "mean,cls",
            "--seeds", 2, "--epochs", 10, "--lr", 0.05, "--predictions", "--folds", 1,
            "--cache-dir", root / "cache"]
    runs = {}
    for name, extra in (("default", []), ("swapped", ["--labels", "pos,neg"])):
        out = root / name
        result = invoke([*args, *extra, "--out", out])
        assert result.exit_code == 0, result.output
        runs[name] = dict(out=out, predictions=read(out / "predictions.csv"),
                          labels=json.loads((out / "labels.json").read_text()))
    return runs


def test_explicit_label_order_orders_the_probability_columns(label_order_runs):
    default, swapped = label_order_runs["default"], label_order_runs["swapped"]
    assert default["labels"] == {"0": "neg", "1": "pos"}
    assert swapped["labels"] == {"0": "pos", "1": "neg"}
    assert list(default["predictions"].columns[-2:]) == ["p_neg", "p_pos"]
    assert list(swapped["predictions"].columns[-2:]) == ["p_pos", "p_neg"]
    for run in (default, swapped):
        items = run["predictions"]
        # p_<name> is the probability of <name>: the true label's column is high
        truth = np.where(items["label"] == "pos", items["p_pos"], items["p_neg"])
        assert (truth > 0.5).all()
        assert (items["predicted"] == items["label"]).all()
        assert np.allclose(items["p_pos"] + items["p_neg"], 1.0)
        # label-id order in the saved heads follows labels.json
        for (pooler, layer, seed), group in items.groupby(["pooler", "layer", "seed"]):
            saved = np.load(run["out"] / "heads" / f"{pooler}@{layer}-seed{seed}.npy")
            columns = [f"p_{run['labels'][str(i)]}" for i in range(2)]
            np.testing.assert_allclose(group[columns].to_numpy(), saved, rtol=1e-12)


def test_label_order_does_not_change_the_test_items(label_order_runs):
    default = label_order_runs["default"]["predictions"]
    swapped = label_order_runs["swapped"]["predictions"]
    key = ["pooler", "layer", "seed", "row"]
    assert sorted(default["row"].unique()) == sorted(swapped["row"].unique())
    merged = default.merge(swapped, on=key, suffixes=("", "_swapped"))
    assert len(merged) == len(default)
    # the same items, the same answers: p_pos is P(pos) in both orders
    assert (merged["predicted"] == merged["predicted_swapped"]).all()
    assert ((merged["p_pos"] > 0.5) == (merged["p_pos_swapped"] > 0.5)).all()


# ---------------------------------------------------------------- export

def test_export_pairs_as_markdown(main_run):
    result = invoke(["export", main_run["out"], "--table", "pairs", "--format", "md"])
    assert result.exit_code == 0, result.output
    assert "p accuracy (Holm)" in result.output
    assert "p McNemar (Holm)" in result.output
    for metric in METRICS:  # an interval column per metric
        assert f"{metric} a - b [95% CI]" in result.output
    for feature_set in IDS:
        assert feature_set in result.output


def test_export_summary_markdown_shows_layers_and_intervals(main_run):
    result = invoke(["export", main_run["out"], "--format", "md"])
    assert result.exit_code == 0, result.output
    header = result.output.splitlines()[0]
    assert "layer" in header and "group" in header and "accuracy (95% CI)" in header
    assert "1+2" in result.output


def test_export_recipe_as_json(main_run, tiny_model_dir):
    import torch
    import transformers

    result = invoke(["export", main_run["out"], "--table", "recipe", "--format", "json"])
    assert result.exit_code == 0, result.output
    recipe = json.loads(result.output)
    assert recipe["model"] == str(tiny_model_dir)
    assert HEX64.fullmatch(recipe["tokenizer_sha256"])
    assert recipe["lowercase"] is True
    assert recipe["max_length"] == 64
    assert recipe["layers"] == [1, 2]
    assert recipe["seeds"] == list(range(SEEDS))
    assert HEX64.fullmatch(recipe["split_sha256"])
    digest = hashlib.sha256(main_run["data"].read_bytes()).hexdigest()
    assert recipe["data_sha256"] == {str(main_run["data"]): digest}
    assert recipe["versions"]["torch"] == torch.__version__
    assert recipe["versions"]["transformers"] == transformers.__version__
    assert recipe["labels"] == ["neg", "pos"]
    assert sorted(recipe["poolers"]) == sorted(POOLERS.split(","))


def test_export_predictions_of_a_run_without_them(main_run, tiny_model_dir):
    root = main_run["root"]
    out = root / "no-predictions"
    result = invoke(["run", "--data", main_run["data"], "--model", tiny_model_dir,
                     "--poolers", "cls", "--seeds", 1, "--epochs", 1, "--out", out,
                     "--cache-dir", root / "cache"])
    assert result.exit_code == 0, result.output
    assert not (out / "predictions.csv").exists()
    result = invoke(["export", out, "--table", "predictions", "--format", "csv"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "--predictions" in errors[0], result.output


# ---------------------------------------------------------------- resume

@pytest.mark.slow
def test_a_resumed_run_reproduces_its_tables_byte_for_byte(main_run, tmp_path):
    copy = tmp_path / "resumed"
    shutil.copytree(main_run["out"], copy)
    for name in ("pairs.csv", "summary.csv", "results.csv", "predictions.csv"):
        (copy / name).unlink()
    result = invoke([*main_run["args"], "--out", copy])
    assert result.exit_code == 0, result.output
    assert f"reusing {len(IDS) * FOLDS * SEEDS} finished heads" in result.stderr
    for name in ("pairs.csv", "summary.csv", "results.csv", "predictions.csv"):
        assert (copy / name).read_bytes() == (main_run["out"] / name).read_bytes(), name
    heads = sorted(p.name for p in (copy / "heads").iterdir())
    assert heads == sorted(p.name for p in (main_run["out"] / "heads").iterdir())


@pytest.mark.slow
def test_a_rerun_that_trains_nothing_compares_nothing_and_writes_the_same_bytes(
        tmp_path, tiny_model_dir, small_csv, monkeypatch):
    import poolkit
    from poolkit.heads.base import HeadConfig
    from poolkit.pipeline import stages

    calls = []
    original = stages.compare

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(stages, "compare", counting)
    out = tmp_path / "run"
    options = dict(model=str(tiny_model_dir), poolers=("cls", "mean"), folds=3, seeds=2, out=out,
                   head=HeadConfig(max_epochs=5))
    poolkit.run(small_csv, **options)
    first = {name: (out / name).read_bytes() for name in ("pairs.csv", "summary.csv")}
    poolkit.run(small_csv, **options)
    assert len(calls) == 1  # the second run read the comparison of the same heads
    assert {name: (out / name).read_bytes() for name in first} == first
    (out / "comparison.json").unlink()  # gone: computed again, to the same bytes
    poolkit.run(small_csv, **options)
    assert len(calls) == 2 and (out / "pairs.csv").read_bytes() == first["pairs.csv"]
    poolkit.run(small_csv, **{**options, "seeds": 3})  # other heads: compared again
    assert len(calls) == 3
