"""The layer × pooler grid: ``--layers`` specs, the layer-major cache checked against
Hugging Face's own ``hidden_states``, one encoder pass for a whole sweep, multi-layer
and trainable poolers in a run, heads reused when layers are added, the CLI.

The layer states are compared with ``BertModel(..., output_hidden_states=True)``
run by Hugging Face on one text at a time (no padding), never with poolkit's own
encoder.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ALL_POOLERS, TINY_LAYER, count_forward, invoke, make_rows
from pandas.testing import assert_frame_equal

import poolkit
from poolkit.errors import PoolkitError
from poolkit.evaluation.metrics import METRICS
from poolkit.heads.base import HeadConfig

HEAD = HeadConfig(max_epochs=5)
#: Poolers of the last-layer run after a sweep: one per layer, plus one on layers 1 and 2.
LAST_POOLERS = ["mean", "max", "first_last_avg"]
SINGLE_LAYER = tuple(name for name in ALL_POOLERS if name != "first_last_avg")
ATOL = 1e-5  # fp32 cache against fp32 Hugging Face


# ---------------------------------------------------------------- helpers, fixtures

def entries(root):
    """Complete cache entries under ``root``."""
    root = Path(root)
    if not root.exists():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "meta.json").is_file())


def write_csv(path, rows):
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(path, index=False)
    return path


def read_results(path):
    return pd.read_csv(path, dtype={"layer": str})


@pytest.fixture(scope="module")
def hf_reference(tiny_model_dir):
    """``states(text) -> [hidden_states[i][0] for i in 0..L]`` by Hugging Face, one text at a time."""
    from transformers import AutoTokenizer, BertModel

    model = BertModel.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    def states(text):
        batch = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            out = model(**batch, output_hidden_states=True)
        return [h[0] for h in out.hidden_states]

    return states, tokenizer


# Lengths vary and repeat, in no sorted order, so storage order != input order.
TEXTS = [
    "good movie",
    "the plot was dull and the actor was boring but the story was fun",
    "awful",
    "bad movie",
    "it was a really good film , i loved it !",
    "movie good",
    "the film was not very good",
    "hated it",
    "great fun , really",
    "a dull story",
]


# ---------------------------------------------------------------- parse_layers

@pytest.mark.parametrize("spec, expected", [
    ("-1", [2]),
    ("-2", [1]),
    ("-3", [0]),
    ("-3..-1", [0, 1, 2]),
    ("-2..-1", [1, 2]),
    ("0,2", [0, 2]),
    (" 0 , 2 ", [0, 2]),
    ("2,2,-1", [2]),
    ("all", [0, 1, 2]),
    ("1..2", [1, 2]),
    ("0..-1", [0, 1, 2]),
    ("1..1", [1]),
    ("0", [0]),
    ("2", [2]),
    (-1, [2]),
    (0, [0]),
    (["0", "-1"], [0, 2]),
    (None, [2]),
])
def test_parse_layers(spec, expected):
    from poolkit.encoding.layers import parse_layers

    assert parse_layers(spec, 2) == expected


@pytest.mark.parametrize("spec, culprit", [
    ("x", "x"),
    ("5", "5"),
    ("3", "3"),
    ("-9", "-9"),
    ("-4", "-4"),
    ("-4..-1", "-4"),
    ("2..1", "2..1"),
    ("0..7", "7"),
    ("1.5", "1.5"),
])
def test_parse_layers_rejects_bad_specs_in_one_line(spec, culprit):
    from poolkit.encoding.layers import parse_layers

    with pytest.raises(PoolkitError) as info:
        parse_layers(spec, 2)
    message = str(info.value)
    assert culprit in message
    assert "\n" not in message.strip()


# ---------------------------------------------------------------- the layer-major cache

@pytest.fixture(scope="module")
def sweep_cache(tiny_model_dir, tmp_path_factory):
    """``encode_to_cache`` of TEXTS with layers 0..2, fp32, in several small batches."""
    from poolkit.encoding.encode import encode_to_cache
    from poolkit.encoding.model import load_encoder

    root = tmp_path_factory.mktemp("layer-cache")
    encoder = load_encoder(str(tiny_model_dir))
    cache, ran = encode_to_cache(encoder, TEXTS, root, device="cpu", dtype="fp32",
                                 layers=[2, 0, 1], max_batch_tokens=40)
    return cache, ran, encoder, root


def test_cached_layers_equal_hugging_face_hidden_states(sweep_cache, hf_reference):
    cache, ran, _, _ = sweep_cache
    states, _ = hf_reference
    assert ran is True
    assert cache.layers == [0, 1, 2]
    assert len(cache) == len(TEXTS)
    for i, text in enumerate(TEXTS):  # input order
        reference = states(text)
        start, length = int(cache.starts[i]), int(cache.lengths[i])
        assert length == reference[0].shape[0], text
        for layer in (0, 1, 2):
            got = torch.from_numpy(np.array(cache.states(layer)[start : start + length]))
            torch.testing.assert_close(got, reference[layer], atol=ATOL, rtol=1e-4,
                                       msg=f"text {i} layer {layer}")
    # the three layers really differ (not one layer stored three times)
    first = slice(int(cache.starts[0]), int(cache.starts[0] + cache.lengths[0]))
    assert not np.allclose(cache.states(0)[first], cache.states(2)[first])
    assert not np.allclose(cache.states(1)[first], cache.states(2)[first])


def test_tokens_bin_is_layers_times_tokens_times_hidden(sweep_cache, hf_reference):
    cache, _, encoder, _ = sweep_cache
    _, tokenizer = hf_reference
    tokens = sum(len(tokenizer(text)["input_ids"]) for text in TEXTS)
    assert int(cache.lengths.sum()) == tokens
    size = (cache.path / "tokens.bin").stat().st_size
    assert size == 3 * tokens * encoder.hidden_size * np.dtype(np.float32).itemsize
    meta = json.loads((cache.path / "meta.json").read_text())
    assert meta["layers"] == [0, 1, 2]
    assert cache.path.name.endswith("-L0-1-2")


def test_states_padded_and_gather_per_layer(sweep_cache, hf_reference):
    cache, _, _, _ = sweep_cache
    states, _ = hf_reference
    reference = [states(text) for text in TEXTS]
    assert np.array_equal(cache.states(None), cache.states(2))
    with pytest.raises(KeyError):
        cache.states(3)
    for layer in (0, 1, 2):
        seen = []
        for indices in cache.batches(max_tokens=30):
            hidden, mask = cache.padded(indices, layer)
            for row, i in enumerate(indices):
                n = reference[i][layer].shape[0]
                assert mask[row].tolist() == [1] * n + [0] * (mask.shape[1] - n)
                torch.testing.assert_close(hidden[row, :n], reference[i][layer], atol=ATOL,
                                           rtol=1e-4)
                assert not hidden[row, n:].any()
            seen.extend(indices.tolist())
        assert sorted(seen) == list(range(len(TEXTS)))
        order = np.array([7, 1, 4, 0, 9])  # any texts, any order
        hidden, mask = cache.gather(order, layer)
        for row, i in enumerate(order):
            n = reference[i][layer].shape[0]
            assert int(mask[row].sum()) == n
            torch.testing.assert_close(hidden[row, :n], reference[i][layer], atol=ATOL, rtol=1e-4)
            assert not hidden[row, n:].any()


def test_in_memory_block_gathers_what_the_cache_file_gives_bit_for_bit(sweep_cache):
    """Trainable poolers' batches from the in-memory block: the same tensors as
    ``gather`` from the file, standardized or not, any texts in any order."""
    from poolkit.heads.base import Standardization

    cache = sweep_cache[0]
    scale = Standardization(torch.linspace(-1, 1, cache.hidden_size),
                            torch.linspace(0.5, 2, cache.hidden_size))
    for layer in (0, 2):
        for standardize in (None, scale):
            block = cache.in_memory(layer, standardize)
            for order in (np.array([7, 1, 4, 0, 9]), np.array([3]), np.arange(len(TEXTS))):
                hidden, mask = block.gather(order)
                want_hidden, want_mask = cache.gather(order, layer, standardize)
                assert torch.equal(hidden, want_hidden) and torch.equal(mask, want_mask)
                assert hidden.shape == (len(order), int(cache.lengths[order].max()),
                                        cache.hidden_size)


def test_in_memory_block_written_over_a_spare_one_is_a_fresh_block_bit_for_bit(sweep_cache):
    """The next fold's block reuses the last one's memory (a trainable pooler's folds
    read the same layer each time), in chunks of any size, with the same bits as a
    fresh block; a spare of another shape is not used."""
    from poolkit.heads.base import Standardization

    cache = sweep_cache[0]
    first = Standardization(torch.zeros(cache.hidden_size), torch.ones(cache.hidden_size))
    second = Standardization(torch.linspace(-1, 1, cache.hidden_size),
                             torch.linspace(0.5, 2, cache.hidden_size))
    spare = cache.in_memory(0, first)
    fresh = cache.in_memory(2, second)
    for chunk in (1 << 13, 3):
        reused = cache.in_memory(2, second, spare, chunk=chunk)
        assert reused.block.data_ptr() == spare.block.data_ptr()
        assert torch.equal(reused.block, fresh.block)
    odd = type(spare)(torch.zeros(3, cache.hidden_size), cache)
    assert cache.in_memory(2, second, odd).block.data_ptr() != odd.block.data_ptr()


def test_in_memory_gather_into_kept_memory_gives_the_same_batches(sweep_cache):
    """A training step's batch is copied into memory the block keeps (grown when a batch
    needs more): each batch the same bits as a fresh copy, the next one written over it."""
    cache = sweep_cache[0]
    block = cache.in_memory(2)
    batches = (np.arange(len(TEXTS)), np.array([7, 1, 4]), np.array([3]), np.array([2, 9]))
    kept = []
    for order in batches:
        hidden, mask = block.gather(order, reuse=True)
        want_hidden, want_mask = block.gather(order)
        assert torch.equal(hidden, want_hidden) and torch.equal(mask, want_mask)
        kept.append(hidden)  # held: a fresh copy could not land where an earlier one is
    # the first batch was the largest: no new memory after it
    assert len({hidden.data_ptr() for hidden in kept}) == 1


@pytest.mark.parametrize("kept", [True, False])
def test_token_stats_are_mean_and_std_over_the_real_tokens_of_the_given_texts(
        sweep_cache, hf_reference, kept, monkeypatch):
    """What trainable poolers standardize with: per dimension, over every real
    token of the texts (not per text, not counting padding), from per-text sums read
    in chunks of tokens that split texts and kept for every fold, or (``kept`` False: too
    many texts to keep them) read for the given texts in chunks of texts."""
    from poolkit.heads import trainable
    from poolkit.heads.trainable import token_standardization

    if not kept:
        monkeypatch.setattr(trainable, "MOMENTS_BYTES", 0)

    cache = sweep_cache[0]
    states, _ = hf_reference
    rows = np.array([7, 1, 4, 0, 9])
    for layer in (0, 2):
        real = torch.cat([states(TEXTS[i])[layer] for i in rows]).double()
        moments = {}
        standardize = token_standardization(cache, rows, layer, moments, chunk=2)
        assert (layer in moments) == kept
        if kept:  # read in chunks of tokens that split texts: the same sums
            for whole, split in zip(moments[layer], cache.text_moments(layer, chunk=7)):
                np.testing.assert_allclose(split, whole, rtol=1e-12)
        torch.testing.assert_close(standardize.shift, real.mean(dim=0).float(), atol=ATOL,
                                   rtol=1e-4)
        torch.testing.assert_close(standardize.scale, real.std(dim=0, correction=0).float(),
                                   atol=ATOL, rtol=1e-4)


def test_a_subset_of_layers_reuses_the_sweep_entry(sweep_cache, forward_calls):
    from poolkit.encoding.encode import encode_to_cache

    cache, _, encoder, root = sweep_cache
    for layers in ([2], [1], [0, 2], None):
        again, ran = encode_to_cache(encoder, TEXTS, root, device="cpu", dtype="fp32",
                                     layers=layers)
        assert ran is False, layers
        assert again.path == cache.path
    assert forward_calls == []


# ---------------------------------------------------------------- features of layers

def test_multi_layer_and_per_layer_features_equal_hand_computation(tiny_model_dir, hf_reference,
                                                                   tmp_path):
    from poolkit.config import RunConfig
    from poolkit.pipeline import stages as pipeline

    states, _ = hf_reference
    poolers = pipeline.resolve_poolers(["first_last_avg", "mean", "cls"]).selected
    config = RunConfig(model=str(tiny_model_dir), cache_dir=tmp_path / "c", cache_dtype="fp32",
                       layers="0")
    encoded = pipeline.encode_for(config, config.encoder(config.model), poolers, TEXTS)
    pooled = pipeline.pool(encoded)
    assert encoded.failures == {} and pooled.failures == {}
    features = pooled.arrays
    assert sorted(features) == ["cls@0", "first_last_avg@1+2", "mean@0"]
    assert encoded.layers == [0, 1, 2]
    for i, text in enumerate(TEXTS):
        h = states(text)
        torch.testing.assert_close(torch.from_numpy(features["first_last_avg@1+2"][i]),
                                   ((h[1] + h[2]) / 2).mean(dim=0), atol=ATOL, rtol=1e-4)
        torch.testing.assert_close(torch.from_numpy(features["mean@0"][i]), h[0].mean(dim=0),
                                   atol=ATOL, rtol=1e-4)
        torch.testing.assert_close(torch.from_numpy(features["cls@0"][i]), h[0][0],
                                   atol=ATOL, rtol=1e-4)
    # first_last_avg is not the last layer's mean alone
    last_mean = np.stack([states(t)[2].mean(dim=0).numpy() for t in TEXTS])
    assert not np.allclose(features["first_last_avg@1+2"], last_mean, atol=1e-3)


# ---------------------------------------------------------------- one encoder pass for a sweep

@pytest.fixture(scope="module")
def sweep_runs(tiny_model_dir, tmp_path_factory):
    """``run(layers="all")`` with every pooler on a cold cache, then ``layers="-1"``;
    the ``BertModel.forward`` calls of each; a single-layer pass's calls for scale."""
    root = tmp_path_factory.mktemp("sweep-run")
    data = write_csv(root / "data.csv", make_rows())
    cache = root / "cache"
    kwargs = dict(model=str(tiny_model_dir), seeds=2, head=HEAD, cache_dir=cache)
    with pytest.MonkeyPatch.context() as patcher:
        calls = count_forward(patcher)
        sweep = poolkit.run(data, layers="all", **kwargs)
        sweep_calls = list(calls)
        sweep_entries = entries(cache)
        calls.clear()
        last = poolkit.run(data, layers="-1", poolers=LAST_POOLERS, **kwargs)
        last_calls = list(calls)
        calls.clear()
        # the same texts encoded for one layer only, in another cache folder
        texts = pd.read_csv(data)["text"].tolist()
        poolkit.pool(texts, ["cls"], model=str(tiny_model_dir), cache_dir=root / "single")
        single_calls = list(calls)
    return dict(sweep=sweep, sweep_calls=sweep_calls, sweep_entries=sweep_entries, last=last,
                last_calls=last_calls, single_calls=single_calls, entries=entries(cache),
                texts=texts)


@pytest.mark.slow
def test_a_layer_sweep_with_every_pooler_runs_the_encoder_once(sweep_runs):
    calls, single = sweep_runs["sweep_calls"], sweep_runs["single_calls"]
    assert calls, "the encoder never ran on a cold cache"
    # the batches of one single-layer pass, each text at most once: not once per layer
    texts_encoded = sum(shape[0] for shape in single)
    assert 0 < texts_encoded <= len(sweep_runs["texts"])
    assert sum(shape[0] for shape in calls) == texts_encoded
    assert len(sweep_runs["sweep_entries"]) == 1
    assert sweep_runs["sweep_entries"][0].endswith("-L0-1-2")
    settings = sweep_runs["sweep"].settings
    assert settings["encoder_ran"] is True
    assert settings["layers"] == [0, 1, 2]


@pytest.mark.slow
def test_a_last_layer_run_after_a_sweep_reuses_its_entry(sweep_runs):
    assert sweep_runs["last_calls"] == []
    settings = sweep_runs["last"].settings
    assert settings["encoder_ran"] is False
    assert settings["cache"] == sweep_runs["sweep"].settings["cache"]
    assert sweep_runs["entries"] == sweep_runs["sweep_entries"]  # no new entry


@pytest.mark.slow
def test_a_run_needing_an_uncached_layer_encodes_again(small_csv, tiny_model_dir, tmp_path,
                                                       forward_calls):
    kwargs = dict(model=str(tiny_model_dir), poolers=["mean"], seeds=1,
                  head=HeadConfig(max_epochs=1), cache_dir=tmp_path / "c")
    first = poolkit.run(small_csv, layers="-1", **kwargs)
    ran = len(forward_calls)
    assert ran and first.settings["encoder_ran"] is True
    second = poolkit.run(small_csv, layers="0", **kwargs)
    assert second.settings["encoder_ran"] is True
    assert len(forward_calls) == 2 * ran
    assert second.results["layer"].tolist() == ["0"]
    third = poolkit.run(small_csv, layers="-1", **kwargs)  # both are cached now
    assert third.settings["encoder_ran"] is False
    assert len(forward_calls) == 2 * ran


@pytest.mark.slow
def test_sweep_results_have_a_row_per_pooler_layer_and_seed(sweep_runs):
    results = sweep_runs["sweep"].results
    expected = sorted([(p, str(layer), seed) for p in SINGLE_LAYER for layer in (0, 1, 2)
                       for seed in (0, 1)] + [("first_last_avg", "1+2", s) for s in (0, 1)])
    assert sorted(zip(results["pooler"], results["layer"], results["seed"])) == expected
    assert len(results) == len(expected) == 56
    for metric in METRICS:
        assert np.isfinite(results[metric]).all(), metric
    summary = sweep_runs["sweep"].summary
    assert len(summary) == len(SINGLE_LAYER) * 3 + 1
    assert not summary.duplicated(["pooler", "layer"]).any()
    assert set(summary["layer"]) == {"0", "1", "2", "1+2"}
    assert (summary["seeds"] == 2).all()
    assert (summary["status"] == "ok").all()
    # the last-layer run: each pooler on its own layer
    last = sweep_runs["last"].results
    assert sorted(zip(last["pooler"], last["layer"])) == sorted(
        (p, TINY_LAYER[p]) for p in LAST_POOLERS for _ in (0, 1))


@pytest.mark.slow
def test_layer_2_rows_of_a_sweep_equal_a_last_layer_run(sweep_runs):
    sweep, last = sweep_runs["sweep"].results, sweep_runs["last"].results
    columns = ["pooler", "layer", "seed", "dim", "best_epoch", "epochs", *METRICS]
    kept = sweep["layer"].isin(["2", "1+2"]) & sweep["pooler"].isin(LAST_POOLERS)
    left = sweep[kept][columns].sort_values(["pooler", "seed"])
    right = last[columns].sort_values(["pooler", "seed"])
    assert_frame_equal(left.reset_index(drop=True), right.reset_index(drop=True), check_exact=True)


# ---------------------------------------------------------------- heads reused when adding layers

@pytest.mark.slow
def test_adding_layers_trains_only_the_new_heads(small_csv, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    kwargs = dict(model=str(tiny_model_dir), poolers=["mean", "first_last_avg", "attention"],
                  seeds=2, head=HEAD, out=out, cache_dir=tmp_path / "c", folds=1)
    first = poolkit.run(small_csv, layers="-1", **kwargs).results
    heads = out / "heads"
    before = {p.name: p.read_bytes() for p in heads.iterdir()}
    assert sorted(before) == sorted(
        f"{fs}-seed{s}.{ext}" for fs in ("mean@2", "first_last_avg@1+2", "attention@2")
        for s in (0, 1) for ext in ("json", "npy"))
    messages = []
    sweep = poolkit.run(small_csv, layers="all", log=messages.append, **kwargs).results

    after = {p.name: p.read_bytes() for p in heads.iterdir()}
    for name, saved in before.items():
        assert after[name] == saved, f"{name} changed"
    new = sorted(set(after) - set(before))
    assert new == sorted(f"{fs}-seed{s}.{ext}" for fs in ("mean@0", "mean@1", "attention@0",
                                                          "attention@1")
                         for s in (0, 1) for ext in ("json", "npy"))
    assert any("reusing 6 finished" in m for m in messages), messages

    columns = ["pooler", "layer", "seed", "dim", "best_epoch", "epochs", *METRICS]
    old = first[columns].sort_values(["pooler", "seed"]).reset_index(drop=True)
    kept = sweep[sweep["layer"].isin(["2", "1+2"])][columns]
    assert_frame_equal(kept.sort_values(["pooler", "seed"]).reset_index(drop=True), old,
                       check_exact=True)
    assert len(sweep) == (2 * 3 + 1) * 2
    on_disk = read_results(out / "results.csv")
    assert sorted(set(on_disk["layer"])) == ["0", "1", "1+2", "2"]


# ---------------------------------------------------------------- the trainable attention pooler

@pytest.mark.slow
def test_attention_is_trained_from_the_cache_and_deterministic(small_csv, tiny_model_dir, tmp_path,
                                                               forward_calls):
    kwargs = dict(model=str(tiny_model_dir), poolers=["attention", "mean"], seeds=2, head=HEAD,
                  cache_dir=tmp_path / "c", layers="-1")
    first = poolkit.run(small_csv, **kwargs)
    texts = pd.read_csv(small_csv)["text"]
    assert 0 < sum(shape[0] for shape in forward_calls) <= len(texts), \
        "the encoder ran more than once over the texts"
    ran = len(forward_calls)
    second = poolkit.run(small_csv, **kwargs)
    assert len(forward_calls) == ran, "training attention ran the encoder again"
    assert second.settings["encoder_ran"] is False

    attention = first.results[first.results["pooler"] == "attention"]
    assert sorted(zip(attention["layer"], attention["seed"])) == [("2", 0), ("2", 1)]
    for metric in METRICS:
        assert np.isfinite(attention[metric]).all(), metric
    assert (attention["dim"] == 32).all()
    assert (attention["epochs"] >= 1).all() and (attention["epochs"] <= 5).all()
    assert first.failures == {}
    assert_frame_equal(first.results, second.results, check_exact=True)


def test_attention_trains_the_same_from_memory_as_from_the_cache_file(
        small_csv, tiny_model_dir, tmp_path, monkeypatch):
    """Token states held in memory (the default while they fit; each fold's block written
    over the last fold's) or read batch by batch from the cache file: the same trained
    heads, bit for bit."""
    from poolkit.heads import trainable

    kwargs = dict(model=str(tiny_model_dir), poolers=["attention"], seeds=1, head=HEAD,
                  cache_dir=tmp_path / "c", layers="-1")
    from_memory = poolkit.run(small_csv, **kwargs).results
    monkeypatch.setattr(trainable, "IN_MEMORY_BYTES", 0)
    from_file = poolkit.run(small_csv, **kwargs).results
    assert len(from_file) == 1
    assert_frame_equal(from_memory, from_file, check_exact=True)


# ---------------------------------------------------------------- the CLI

@pytest.mark.slow
def test_cli_run_with_layers_all(small_csv, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    result = invoke(["run", "--data", small_csv, "--model", tiny_model_dir,
                     "--poolers", "cls,first_last_avg", "--layers", "all", "--seeds", 2,
                     "--epochs", 5, "--out", out, "--cache-dir", tmp_path / "c",
                     "--plot", "png"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    results = read_results(out / "results.csv")
    assert "layer" in results.columns
    assert sorted(zip(results["pooler"], results["layer"], results["seed"])) == sorted(
        [("cls", str(layer), s) for layer in (0, 1, 2) for s in (0, 1)]
        + [("first_last_avg", "1+2", s) for s in (0, 1)])
    summary = read_results(out / "summary.csv")
    assert sorted(zip(summary["pooler"], summary["layer"])) == [
        ("cls", "0"), ("cls", "1"), ("cls", "2"), ("first_last_avg", "1+2")]
    assert result.stdout.splitlines()[0].split()[:2] == ["pooler", "layer"]
    settings = json.loads((out / "settings.json").read_text())
    assert settings["layers"] == [0, 1, 2]
    assert list((out / "plots").glob("*.png")), "--plot png drew nothing"

    grid = invoke(["export", out, "--table", "grid", "--format", "csv", "-o", tmp_path / "g.csv"])
    assert grid.exit_code == 0, grid.output
    table = pd.read_csv(tmp_path / "g.csv")
    assert list(table.columns) == ["pooler", "layer 0", "layer 1", "layer 2"]
    assert table["pooler"].tolist() == ["cls"]  # first_last_avg (1+2) is not on the grid
    means = summary[summary["pooler"] == "cls"].set_index("layer")["accuracy_mean"]
    assert table.iloc[0, 1:].tolist() == pytest.approx([means[str(k)] for k in (0, 1, 2)])

    single = tmp_path / "single"
    invoke(["run", "--data", small_csv, "--model", tiny_model_dir, "--poolers", "cls",
            "--seeds", 1, "--epochs", 2, "--out", single, "--cache-dir", tmp_path / "c"])
    refused = invoke(["export", single, "--table", "grid", "--format", "md"])
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert "--layers" in refused.output and str(single) in refused.output


def test_cli_run_with_a_layer_the_model_lacks(small_csv, tiny_model_dir, tmp_path, forward_calls):
    cache = tmp_path / "c"
    result = invoke(["run", "--data", small_csv, "--model", tiny_model_dir, "--poolers", "mean",
                     "--layers", "7", "--seeds", 1, "--epochs", 1, "--out", tmp_path / "run",
                     "--cache-dir", cache])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert "7" in errors[0] and "layer" in errors[0]
    assert forward_calls == []
    assert entries(cache) == []
    assert not (tmp_path / "run" / "results.csv").exists()
