"""Several encoders in one run: ``--model a,b`` gives one table and one set of paired
tests over (model, pooler, layer) on the same items, each model encoded once."""

import json
import shutil

import pandas as pd
import pytest
from conftest import invoke


@pytest.fixture(scope="module")
def wide_model_dir(tiny_model_dir, tmp_path_factory):
    """A second tiny random BERT, 48 wide (the first is 32), with the same tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    path = tmp_path_factory.mktemp("wide") / "wide-bert"
    shutil.copytree(tiny_model_dir, path)
    for weights in path.glob("*.safetensors"):
        weights.unlink()
    config = BertConfig.from_pretrained(tiny_model_dir)
    config.hidden_size, config.intermediate_size = 48, 50
    torch.manual_seed(1)
    BertModel(config).eval().save_pretrained(path)
    return path


@pytest.mark.slow
def test_two_models_one_table_and_paired_tests_across_them(small_csv, tiny_model_dir,
                                                           wide_model_dir, tmp_path):
    out = tmp_path / "run"
    args = ["run", "--data", small_csv, "--model", f"{tiny_model_dir},{wide_model_dir}",
            "--poolers", "cls,bert_pooler", "--seeds", "2", "--folds", "1", "--out", out]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    for model in (tiny_model_dir, wide_model_dir):  # each encoded once, into its own entry
        assert sum(line.startswith("encoded ") and f"with {model} on" in line
                   for line in result.output.splitlines()) == 1
    results = pd.read_csv(out / "results.csv")
    labels = [tiny_model_dir.name, wide_model_dir.name]
    assert results.groupby(["model", "pooler"]).size().to_dict() == {
        (m, p): 2 for m in labels for p in ("cls", "bert_pooler")}
    assert dict(zip(results["model"], results["dim"])) == dict(zip(labels, (32, 48)))
    pairs = pd.read_csv(out / "pairs.csv")
    assert len(pairs) == 6
    across = [(a, b) for a, b in zip(pairs["a"], pairs["b"])
              if a.split(":")[0] != b.split(":")[0]]
    assert len(across) == 4
    assert {f"{labels[0]}:bert_pooler@2", f"{labels[1]}:bert_pooler@2"} <= set(pairs["a"]) | \
        set(pairs["b"])
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns[:3]) == ["model", "pooler", "layer"] and len(summary) == 4
    settings = json.loads((out / "settings.json").read_text())
    assert settings["model"] == [str(tiny_model_dir), str(wide_model_dir)]
    assert [settings["models"][m]["tokens"] > 0 for m in labels] == [True, True]
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["models"][labels[1]]["model_path"] == str(wide_model_dir)

    again = invoke(args)  # both models' heads reused, nothing encoded
    assert again.exit_code == 0 and "reusing 4 finished heads" in again.output
    assert again.output.count("reusing 4 finished heads") == 2
    assert not any(line.startswith("encoded ") for line in again.output.splitlines())
    assert (out / "results.csv").read_text() == results.to_csv(index=False)


@pytest.mark.parametrize("spelling", ["{m}", "{m}/", "{m}/../{name}", "./{rel}"])
def test_a_model_listed_twice_is_an_error_however_spelled(small_csv, tiny_model_dir, spelling,
                                                          monkeypatch):
    monkeypatch.chdir(tiny_model_dir.parent.parent)
    again = spelling.format(m=tiny_model_dir, name=tiny_model_dir.name,
                            rel=tiny_model_dir.relative_to(tiny_model_dir.parent.parent))
    result = invoke(["run", "--data", small_csv, "--model", f"{tiny_model_dir},{again}"])
    assert result.exit_code == 1 and "lists a model twice" in result.output, result.output
    assert "Traceback" not in result.output


def test_a_model_folder_without_its_tokenizer_is_one_line(small_csv, tiny_model_dir, tmp_path):
    """transformers builds a five-token tokenizer for a folder without tokenizer files, and
    every word is [UNK]: the model would run at chance."""
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, bare / name)
    result = invoke(["run", "--data", small_csv, "--model", bare, "--out", tmp_path / "r"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("Error:")]
    assert str(bare) in line and "no tokenizer of its own" in line


@pytest.mark.slow
def test_each_models_fine_tuned_weights_are_kept_apart(small_csv, tiny_model_dir,
                                                       wide_model_dir, tmp_path):
    out = tmp_path / "run"
    result = invoke(["run", "--data", small_csv, "--model", f"{tiny_model_dir},{wide_model_dir}",
                     "--poolers", "mean", "--seeds", "1", "--folds", "1", "--finetune",
                     "--finetune-epochs", "1", "--save-models", "--out", out])
    assert result.exit_code == 0, result.output
    from safetensors import safe_open

    saved = sorted((out / "models").rglob("*.safetensors"))
    assert [p.relative_to(out / "models").parts for p in saved] == [
        (tiny_model_dir.name, "mean@2-ft-seed0.safetensors"),
        (wide_model_dir.name, "mean@2-ft-seed0.safetensors")]
    widths = []
    for path in saved:
        with safe_open(str(path), framework="pt") as handle:
            widths.append(handle.get_slice("classifier.weight").get_shape()[1])
    assert widths == [32, 48]


def _architecture(tiny_model_dir, folder, model):
    """``model`` (a tiny random transformers model) saved in ``folder`` with the tiny
    BERT's WordPiece tokenizer."""
    import torch

    shutil.copytree(tiny_model_dir, folder)
    for name in ("config.json", "model.safetensors"):
        (folder / name).unlink()
    torch.manual_seed(0)
    model.eval().save_pretrained(folder)
    return folder


def test_a_model_that_cannot_be_read_stops_the_run_before_any_model_is_encoded(
        small_csv, tiny_model_dir, tmp_path):
    """On 421099a the first model was encoded (and its heads trained) before the
    second was found unreadable, and the run ended with exit 1 all the same."""
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    result = invoke(["run", "--data", small_csv, "--model", f"{tiny_model_dir},{broken}",
                     "--poolers", "cls", "--folds", "2", "--out", tmp_path / "run"])
    assert result.exit_code == 1 and f"could not load model '{broken}'" in result.output
    assert "encod" not in result.output.replace("could not load", "")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_roberta_distilbert_and_electra_each_pooler_works_or_fails_alone(small_csv,
                                                                         tiny_model_dir,
                                                                         tmp_path):
    """Non-BERT encoders built offline: DistilBERT and ELECTRA have no pooler weights,
    so their bert_pooler fails alone, named with its model; every other set is scored."""
    from transformers import (
        DistilBertConfig,
        DistilBertModel,
        ElectraConfig,
        ElectraModel,
        RobertaConfig,
        RobertaModel,
    )

    vocab = len((tiny_model_dir / "vocab.txt").read_text().split())
    small = dict(vocab_size=vocab, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=37, max_position_embeddings=80)
    models = [
        _architecture(tiny_model_dir, tmp_path / "roberta", RobertaModel(RobertaConfig(
            hidden_size=32, pad_token_id=0, type_vocab_size=1, **small))),
        _architecture(tiny_model_dir, tmp_path / "distilbert", DistilBertModel(DistilBertConfig(
            vocab_size=vocab, dim=48, n_layers=2, n_heads=4, hidden_dim=37,
            max_position_embeddings=64, pad_token_id=0))),
        _architecture(tiny_model_dir, tmp_path / "electra", ElectraModel(ElectraConfig(
            embedding_size=16, hidden_size=24, **small))),
    ]
    out = tmp_path / "run"
    result = invoke(["run", "--data", small_csv, "--model", ",".join(map(str, models)),
                     "--poolers", "cls,bert_pooler,mean,max", "--seeds", "1", "--folds", "2",
                     "--out", out])
    assert result.exit_code == 3, result.output
    for model in ("distilbert", "electra"):
        assert f"pooler 'bert_pooler' failed on layer 2 of model {model}: " \
            "ValueError: the model has no pretrained pooler weights" in result.output
    status = pd.read_csv(out / "summary.csv").set_index(["model", "pooler"])["status"]
    failed = {("distilbert", "bert_pooler"), ("electra", "bert_pooler")}
    assert {key for key, value in status.items() if value != "ok"} == failed
    assert len(status) == 12
    dims = pd.read_csv(out / "summary.csv").groupby("model")["dim"].max().to_dict()
    assert dims == {"roberta": 32, "distilbert": 48, "electra": 24}  # each model's own width


def test_a_model_failing_while_encoding_fails_alone_and_the_others_results_are_written(
        small_csv, tiny_model_dir, wide_model_dir, tmp_path, monkeypatch):
    """On 581334f the second model's forward failing after the first model's heads were
    trained ended the run with exit 1 and no results.csv (issue 27, class 6)."""
    from transformers import BertModel

    original = BertModel.forward

    def wide_fails(self, *args, **kwargs):
        if self.config.hidden_size == 48:
            raise RuntimeError("CUDA out of memory (simulated)")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BertModel, "forward", wide_fails)
    out = tmp_path / "run"
    result = invoke(["run", "--data", small_csv, "--model", f"{tiny_model_dir},{wide_model_dir}",
                     "--poolers", "cls,mean", "--folds", "2", "--seeds", "1", "--out", out])
    assert result.exit_code == 3, result.output
    assert "error: model wide-bert failed: model " in result.output
    assert "failed while encoding: RuntimeError: CUDA out of memory (simulated)" in result.output
    tiny = tiny_model_dir.name
    summary = pd.read_csv(out / "summary.csv").set_index(["model", "pooler"])["status"]
    assert summary[(tiny, "cls")] == "ok" and summary[(tiny, "mean")] == "ok"
    assert summary[("wide-bert", "mean")].startswith("failed: model failed: model ")
    assert set(pd.read_csv(out / "results.csv")["model"]) == {tiny}
    settings = json.loads((out / "settings.json").read_text())
    assert settings["models"]["wide-bert"]["cache"] is None


def test_every_model_failing_is_one_line(small_csv, tiny_model_dir, wide_model_dir, tmp_path,
                                         monkeypatch):
    from transformers import BertModel

    def fails(self, *args, **kwargs):
        raise RuntimeError("simulated")

    monkeypatch.setattr(BertModel, "forward", fails)
    result = invoke(["run", "--data", small_csv, "--model", f"{tiny_model_dir},{wide_model_dir}",
                     "--poolers", "mean", "--folds", "2", "--out", tmp_path / "run"])
    assert result.exit_code == 1
    assert f"every model failed: {tiny_model_dir.name}: model failed: model " in result.output


def test_a_folder_naming_its_own_code_without_the_flag_is_said(small_csv, tiny_model_dir,
                                                               tmp_path):
    """A config with an ``auto_map``: without --trust-remote-code transformers runs its
    built-in class, and the run says so rather than silently."""
    folder = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_custom.CustomModel"}
    (folder / "config.json").write_text(json.dumps(config))
    result = invoke(["run", "--data", small_csv, "--model", folder, "--poolers", "mean",
                     "--seeds", 1, "--epochs", 1, "--folds", 1, "--out", tmp_path / "r"])
    assert result.exit_code == 0, result.output
    assert "names code of its own (auto_map)" in result.output
    assert "built-in bert class runs it instead" in result.output
