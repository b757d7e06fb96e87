"""Using the winner: final heads, ``poolkit predict``, ``poolkit.load``, ``export-model``.

Parity is checked against what poolkit's head computes on its own features: the
features from ``poolkit.pool`` (float32 cache), standardized with the final head's
statistics, times its weights. A broken standardization fold or label order moves
the exported logits far beyond the tolerance (each test shows by how much).
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import PLUGINS_DIR, invoke, one_error_line, write_owned, write_rows

import poolkit
from poolkit.errors import PoolkitError
from poolkit.heads.base import HeadConfig
from poolkit.winner.final import final_epochs

POOLERS = ("cls", "mean", "bert_pooler", "attention")
TEXTS = ["good fun movie", "awful dull plot that was really boring and not fun", "the film",
         "loved it", "hated the story, it was so very dull"]


def _run(folder, model, labels=None, plugins_dir=None, poolers=POOLERS, **options):
    data = folder / "data.csv"
    write_rows(data, 90)
    poolkit.run(data, model=str(model), poolers=poolers, folds=3, seeds=2, labels=labels,
                cache_dtype="fp32", out=folder / "run", cache_dir=folder / "cache",
                head=HeadConfig(max_epochs=30, patience=3), plugins_dir=plugins_dir, **options)
    return folder / "run", data


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_dir):
    """A cross-fitted run (3 folds, 2 seeds) of four poolers on the tiny model."""
    return _run(tmp_path_factory.mktemp("predict"), tiny_model_dir)


def _final(run, set_id):
    record = json.loads((run / "heads" / f"{set_id}-final-seed0.json").read_text())
    probabilities = np.load(run / "heads" / f"{set_id}-final-seed0.npy")
    from safetensors.torch import load_file

    weights = load_file(run / "heads" / f"{set_id}-final-seed0.safetensors")
    return record["head"], probabilities, {k: v.double().numpy() for k, v in weights.items()}


def _reference_logits(set_id, model, weights):
    """The final head on poolkit's own features of TEXTS: standardized, then W x + b (in
    float64), and the tolerance of a float32 model computing it: 1e-5, plus float32's
    rounding of the folded product, 4 eps · |W / σ| |x| (large where the tiny random
    model's σ is small: its [CLS] states barely vary in some dimensions)."""
    pooler = set_id.split("@")[0]
    x = poolkit.pool(TEXTS, [pooler], model=str(model), cache_dtype="fp32")[pooler]
    x = x.astype(float)
    standardized = (x - weights["shift"]) / weights["scale"]
    folded = weights["weight"] / weights["scale"]
    rounding = 4 * np.finfo(np.float32).eps * (np.abs(x) @ np.abs(folded).T + np.abs(
        folded @ weights["shift"]))
    return standardized @ weights["weight"].T + weights["bias"], x, 1e-5 + rounding


def _assert_close(actual, expected, tolerance, x, weights):
    """``actual`` within ``tolerance``, and a broken fold (the head's W, b on the raw
    features) far outside it: the check can fail."""
    assert (np.abs(actual - expected) <= tolerance).all(), np.abs(actual - expected).max()
    unfolded = x @ weights["weight"].T + weights["bias"]
    assert (np.abs(unfolded - expected) > 100 * tolerance).any()


def test_final_epochs_is_the_median_rounded_half_up():
    assert final_epochs([3, 4]) == 4
    assert final_epochs([1, 2, 2, 9]) == 2
    assert final_epochs([5]) == 5
    assert final_epochs([0, 0]) == 1


def test_the_final_head_trains_on_every_item_for_the_median_best_epoch_once(finished,
                                                                           forward_calls):
    run, _ = finished
    logged = []
    classifier = poolkit.load(run, "mean", log=logged.append)
    record, probabilities, weights = _final(run, "mean@2")
    folds = [json.loads(p.read_text())["head"]["best_epoch"]
             for p in sorted((run / "heads").glob("mean@2-fold*-seed*.json"))]
    assert len(folds) == 6 and record["epochs"] == record["best_epoch"] == final_epochs(folds)
    assert probabilities.shape == (90, 2)  # every item of the run
    assert weights["weight"].shape == (2, 32) and weights["scale"].shape == (32,)
    assert classifier.set_id == "mean@2" and list(classifier.classes_) == ["neg", "pos"]
    assert any("trained on all 90 items" in m for m in logged)
    # reused: the run's texts are not encoded again, and the file stays as it was
    before = (run / "heads" / "mean@2-final-seed0.safetensors").stat().st_mtime_ns
    calls = len(forward_calls)
    again = []
    poolkit.load(run, "mean", log=again.append)
    assert any("reused" in m for m in again) and len(forward_calls) == calls
    assert (run / "heads" / "mean@2-final-seed0.safetensors").stat().st_mtime_ns == before


def test_a_damaged_final_head_is_trained_again(tmp_path, finished):
    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    poolkit.load(run, "cls")
    weights = run / "heads" / "cls@2-final-seed0.safetensors"
    damaged = bytearray(weights.read_bytes())
    damaged[-1] ^= 0xFF
    weights.write_bytes(bytes(damaged))
    logged = []
    poolkit.load(run, "cls", log=logged.append)
    assert any("damaged" in m for m in logged) and any("trained on all" in m for m in logged)


@pytest.mark.parametrize("set_id", ["mean@2", "bert_pooler@2", "attention@2"])
def test_predict_on_the_runs_items_reproduces_the_final_heads_predictions(finished, tmp_path,
                                                                        set_id):
    run, data = finished
    out = tmp_path / "predictions.csv"
    result = invoke(["predict", run, "--set", set_id, "--data", data, "-o", out])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out, dtype={"predicted": str})
    _, probabilities, _ = _final(run, set_id)
    assert list(table.columns) == ["row", "text", "predicted", "p_neg", "p_pos"]
    np.testing.assert_allclose(table[["p_neg", "p_pos"]].to_numpy(), probabilities, atol=1e-4)
    assert (table["predicted"] == np.array(["neg", "pos"])[probabilities.argmax(1)]).all()
    assert table["row"].tolist() == list(range(1, 91))


def test_predict_defaults_to_the_runs_best_set_and_names_it(finished, tmp_path):
    run, _ = finished
    best = pd.read_csv(run / "summary.csv").iloc[0]
    new = tmp_path / "new.csv"
    pd.DataFrame({"text": TEXTS}).to_csv(new, index=False)
    result = invoke(["predict", run, "--data", new])
    assert result.exit_code == 0, result.output
    assert f"set: {best['pooler']}@{best['layer']}, the run's best by accuracy" in result.output
    assert "labels: 0=neg, 1=pos" in result.output


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_blank_lines_are_rows_said_or_counted_never_dropped(finished, tmp_path, suffix):
    """Five lines of texts, two blank or whitespace-only: an error naming the first of them
    by its line; with --empty-texts skip, three predictions whose rows name their lines."""
    run, _ = finished
    lines = ["a fine film", "", "a dull plot", "   ", "what a film"]
    new = tmp_path / f"new{suffix}"
    if suffix == ".csv":
        new.write_text("text\n" + "\n".join(lines) + "\n")
    else:
        new.write_text("\n".join(json.dumps({"text": t}) if t.strip() else t
                                  for t in lines) + "\n")
    result = invoke(["predict", run, "--data", new])
    one_error_line(result, new.name, "2 row(s)", "first at row 2", "--empty-texts skip")
    result = invoke(["predict", run, "--data", new, "--empty-texts", "skip", "-o",
                     tmp_path / "out.csv"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "out.csv")
    assert table["row"].tolist() == [1, 3, 5]
    assert table["text"].tolist() == ["a fine film", "a dull plot", "what a film"]
    assert "2 row(s) with an empty or whitespace-only text" in result.output


def test_load_predicts_label_names_and_probabilities_in_label_order(finished):
    classifier = poolkit.load(finished[0], "mean")
    p = classifier.predict_proba(TEXTS)
    assert p.shape == (5, 2) and np.allclose(p.sum(axis=1), 1)
    assert list(classifier.predict(TEXTS)) == list(classifier.classes_[p.argmax(axis=1)])
    with pytest.raises(PoolkitError, match="text 2 is empty"):
        classifier.predict(["good", "  "])
    with pytest.raises(PoolkitError, match="the run's items were strings"):
        classifier.predict([("good", "bad")])


def test_hf_export_is_bert_for_sequence_classification_with_the_heads_logits(finished, tmp_path,
                                                                           tiny_model_dir):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    run, _ = finished
    out = tmp_path / "hf"
    result = invoke(["export-model", run, "--set", "bert_pooler@2", "-o", out, "--format", "hf"])
    assert result.exit_code == 0, result.output
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.id2label == {0: "neg", 1: "pos"}
    tokenizer = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
        logits = model(**batch).logits.double().numpy()
    _, _, weights = _final(run, "bert_pooler@2")
    expected, x, tolerance = _reference_logits("bert_pooler@2", tiny_model_dir, weights)
    _assert_close(logits, expected, tolerance, x, weights)
    classify = pipeline("text-classification", model=str(out))
    expected_labels = np.array(["neg", "pos"])[expected.argmax(1)]
    assert [r["label"] for r in classify(TEXTS)] == list(expected_labels)
    assert json.loads((out / "poolkit.json").read_text())["labels"] == {"0": "neg", "1": "pos"}


@pytest.mark.slow
@pytest.mark.parametrize("set_id", ["mean@2", "cls@2"])
def test_sentence_transformers_export_encodes_the_heads_logits(finished, tmp_path, set_id,
                                                               tiny_model_dir):
    st = pytest.importorskip("sentence_transformers")
    run, _ = finished
    out = tmp_path / "st"
    result = invoke(["export-model", run, "--set", set_id, "-o", out,
                     "--format", "sentence-transformers"])
    assert result.exit_code == 0, result.output
    encoded = st.SentenceTransformer(str(out), device="cpu").encode(TEXTS)
    _, _, weights = _final(run, set_id)
    expected, x, tolerance = _reference_logits(set_id, tiny_model_dir, weights)
    _assert_close(encoded, expected, tolerance, x, weights)
    about = json.loads((out / "poolkit.json").read_text())
    assert about["labels"] == {"0": "neg", "1": "pos"} and about["set"] == set_id
    assert "| 1 | pos |" in (out / "README.md").read_text()


@pytest.mark.slow
def test_the_label_order_given_is_the_exported_one(tmp_path, tiny_model_dir):
    from transformers import AutoConfig

    run, data = _run(tmp_path, tiny_model_dir, labels=("pos", "neg"), poolers=("bert_pooler",))
    assert invoke(["export-model", run, "-o", tmp_path / "hf"]).exit_code == 0
    assert AutoConfig.from_pretrained(tmp_path / "hf").id2label == {0: "pos", 1: "neg"}
    result = invoke(["predict", run, "--data", data, "-o", tmp_path / "p.csv"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "p.csv")
    assert list(table.columns)[-2:] == ["p_pos", "p_neg"]
    _, probabilities, _ = _final(run, "bert_pooler@2")
    np.testing.assert_allclose(table[["p_pos", "p_neg"]].to_numpy(), probabilities, atol=1e-4)


def test_bad_input_is_one_line_each(finished, tmp_path):
    run, data = finished
    new = tmp_path / "new.csv"
    pd.DataFrame({"text": TEXTS}).to_csv(new, index=False)

    def fails(args, *expected):
        result = invoke(args)
        assert result.exit_code == 1, result.output
        error = result.output.strip().splitlines()[-1]
        assert error.startswith("Error: ") and all(e in error for e in expected), error

    fails(["predict", run, "--set", "nope", "--data", new], "--set nope", "cls@2, mean@2")
    fails(["predict", tmp_path, "--data", new], "is not a finished poolkit run")
    fails(["predict", tmp_path / "missing", "--data", new], "does not exist")
    fails(["predict", run, "--data", new, "--text-col", "body"], "no text column 'body'")
    blank = tmp_path / "blank.csv"
    blank.write_text('text\ngood\n""\n')
    fails(["predict", run, "--data", blank], "blank.csv", "column(s) 'text'", "row 2")
    fails(["export-model", run, "--set", "mean@2", "-o", tmp_path / "m"],
          "mean@2 is not a transformers class", "--format sentence-transformers")
    fails(["export-model", run, "--set", "attention@2", "-o", tmp_path / "m",
           "--format", "sentence-transformers"], "attention@2", "Pooling implements")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    fails(["export-model", run, "--set", "bert_pooler", "-o", tmp_path / "full"],
          "not an empty folder")
    assert not (tmp_path / "m").exists()


def test_texts_past_the_length_limit_are_truncated_and_counted(finished, tmp_path):
    run, _ = finished
    new = tmp_path / "long.csv"
    pd.DataFrame({"text": ["good " * 100, "bad"]}).to_csv(new, index=False)
    result = invoke(["predict", run, "--set", "mean", "--data", new])
    assert result.exit_code == 0, result.output
    assert "1 of 2 texts are longer than 64 tokens (the run's limit) and were truncated" \
        in result.output


@pytest.mark.slow
def test_a_changed_plugin_or_model_is_refused(tmp_path, tiny_model_dir):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    shutil.copy(PLUGINS_DIR / "first_last.py", plugins / "first_last.py")
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    run, data = _run(tmp_path, model, plugins_dir=plugins, poolers=("mean", "first_last"))
    set_id = next(p.stem.split("-fold")[0] for p in (run / "heads").glob("first_last*.json"))
    source = plugins / "first_last.py"
    source.write_text(source.read_text() + "\n# edited\n")
    result = invoke(["predict", run, "--set", set_id, "--data", data])
    assert result.exit_code == 1
    assert "pooler 'first_last' changed since the run" in result.output
    assert "--force" in result.output
    forced = invoke(["predict", run, "--set", set_id, "--data", data, "--force"])
    assert forced.exit_code == 0, forced.output
    assert "warning: pooler 'first_last' changed since the run" in forced.output
    shutil.rmtree(model)
    gone = invoke(["predict", run, "--set", "mean", "--data", data])
    assert gone.exit_code == 1 and "model folder not found" in gone.output
    shutil.copytree(tiny_model_dir, model)  # the same files, written anew: not the run's
    (model / "config.json").write_text((model / "config.json").read_text().replace(
        '"hidden_act"', '"_note": "edited", "hidden_act"'))
    changed = invoke(["predict", run, "--set", "mean", "--data", data])
    assert changed.exit_code == 1 and "is not the one the run used" in changed.output


@pytest.mark.slow
def test_a_finetuned_set_predicts_and_exports_with_its_kept_model(tmp_path, tiny_model_dir):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from poolkit.heads.base import FineTuneConfig

    run, data = _run(tmp_path, tiny_model_dir, poolers=("bert_pooler",),
                     finetune=FineTuneConfig(epochs=1, batch_size=16), save_models=True)
    logged = []
    classifier = poolkit.load(run, "bert_pooler@2-ft", log=logged.append)
    assert any("the fine-tuned model the run kept of fold 1" in m for m in logged)
    # the kept model's own test probabilities: fold 1's test items, as the run scored them
    head = json.loads((run / "heads" / "bert_pooler@2-ft-fold0-seed0.json").read_text())
    kept = np.load(run / "heads" / "bert_pooler@2-ft-fold0-seed0.npy")
    assert head["head"]["fold"] == 0 and kept.shape[1] == 2
    out = tmp_path / "hf"
    assert invoke(["export-model", run, "--set", "bert_pooler@2-ft", "-o", out]).exit_code == 0
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        logits = model(**AutoTokenizer.from_pretrained(out)(TEXTS, padding=True,
                                                            return_tensors="pt")).logits
    np.testing.assert_allclose(logits.numpy(), classifier.logits(TEXTS), atol=1e-5)
    shutil.rmtree(run / "models")
    result = invoke(["predict", run, "--set", "bert_pooler@2-ft", "--data", data])
    assert result.exit_code == 1 and "--save-models" in result.output


@pytest.mark.parametrize("name", ["labels.json", "summary.csv", "settings.json"])
def test_a_run_folder_edited_after_the_run_is_refused(tmp_path, finished, name):
    """Swapped label names would name every prediction wrongly: the marker's sha256 of each
    file is checked before it is read."""
    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    if name == "labels.json":
        (run / name).write_text(json.dumps({"0": "pos", "1": "neg"}))
    else:
        (run / name).write_text((run / name).read_text().replace("0", "1", 1))
    for args in (["predict", run, "--data", finished[1]],
                 ["export-model", run, "-o", tmp_path / "m"]):
        one_error_line(invoke(args), str(run / name), "changed after poolkit wrote it")
    assert not (tmp_path / "m").exists()


def test_a_run_without_a_finished_set_is_one_line(tmp_path, finished):
    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    summary = pd.read_csv(run / "summary.csv", dtype=str, keep_default_na=False)
    write_owned(run, {"summary.csv": summary.assign(status="failed: broken").to_csv(index=False)})
    result = invoke(["predict", run, "--data", finished[1]])
    assert result.exit_code == 1 and "has no finished feature set" in result.output
    write_owned(run, {"settings.json": json.dumps({"data": None})})  # an older poolkit's
    result = invoke(["export-model", run, "-o", tmp_path / "m"])
    assert result.exit_code == 1 and "written by an older poolkit" in result.output


@pytest.mark.slow
def test_a_runs_prompt_goes_with_its_sentence_transformers_export(tmp_path, tiny_model_dir):
    """A run with --prompt: its exported sentence-transformers model prepends the prompt by
    default, so its logits are the ones poolkit.load gives."""
    st = pytest.importorskip("sentence_transformers")
    import poolkit

    run, _ = _run(tmp_path, tiny_model_dir, poolers=("mean",), prompt="the plot : ")
    out = tmp_path / "st"
    result = invoke(["export-model", run, "--set", "mean@2", "-o", out,
                     "--format", "sentence-transformers"])
    assert result.exit_code == 0, result.output
    model = st.SentenceTransformer(str(out), device="cpu")
    ours = poolkit.load(run, "mean@2").logits(TEXTS)
    np.testing.assert_allclose(model.encode(TEXTS), ours, atol=1e-4)
    assert np.abs(model.encode(TEXTS, prompt="") - ours).max() > 1e-3  # the prompt matters
    assert json.loads((out / "poolkit.json").read_text())["prompt"] == "the plot : "


def test_a_run_that_ran_remote_code_is_loaded_again_only_when_asked(tmp_path, finished):
    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    settings = json.loads((run / "settings.json").read_text())
    settings["options"]["trust_remote_code"] = True
    write_owned(run, {"settings.json": json.dumps(settings)})
    for args in (["predict", run, "--data", finished[1]],
                 ["export-model", run, "-o", tmp_path / "m"]):
        one_error_line(invoke(args), "ran its model's own code", "--trust-remote-code")
    with pytest.raises(PoolkitError, match="--trust-remote-code"):
        poolkit.load(run)
    said = invoke(["predict", run, "--data", finished[1], "--trust-remote-code"])
    assert said.exit_code == 0, said.output
    assert "runs its own code (--trust-remote-code)" in said.output


def test_an_empty_head_file_is_damaged_and_trained_again_not_an_error(tmp_path, finished):
    """A 0-byte .npy (a full disk, a truncation) is a damaged head, as an edited one is."""
    from poolkit.pipeline.runs import RunStore

    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    record = sorted((run / "heads").glob("*fold0-seed0.json"))[0]
    saved = json.loads(record.read_text())
    store, said = RunStore(run, saved["key"], log=[].append, folds=3), []
    store.log = said.append
    head = saved["head"]
    assert store.load(head["feature_set"], saved["fingerprint"], 0, 0) is not None
    record.with_suffix(".npy").write_bytes(b"")
    assert store.load(head["feature_set"], saved["fingerprint"], 0, 0) is None
    assert said and "damaged or was edited" in said[0]


def test_export_model_to_an_unwritable_folder_is_said_before_the_final_head(tmp_path, finished,
                                                                           monkeypatch):
    """As root every folder is writable, so the check is shown with os.access answering as
    it does for another user on a read-only folder."""
    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    for final in (run / "heads").glob("*final*"):
        final.unlink()
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real(path, mode))
    result = invoke(["export-model", run, "--set", "mean@2", "--format", "sentence-transformers",
                     "-o", locked / "m"])
    one_error_line(result, str(locked), "not writable")
    assert not list((run / "heads").glob("*final*"))
