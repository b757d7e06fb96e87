"""Every model a user names: encoders without an SDPA kernel, decoder-only models, and the
architecture matrix (every text architecture of the installed transformers, built tiny).
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import FIXED_POOLERS, invoke, write_rows

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from architectures import KNOWN_FAILURES, NEEDS_MORE, build, text_architectures, try_architecture  # noqa: E402

#: Encoders transformers has no SDPA kernel for: before issue 29 poolkit asked for SDPA and
#: none of them loaded.
NO_SDPA = ("deberta", "deberta-v2", "mpnet", "xlnet", "longformer", "big_bird",
           "megatron-bert", "convbert", "rembert", "roformer", "nystromformer", "ibert")
DECODERS = ("gpt2", "llama", "mistral", "qwen2", "qwen3")
TEXTS = ["the movie was good", "a very dull and boring story , really", "fun",
         "it was not bad but not great either"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_model_dir):
    """``tiny(model_type)``: a folder with a tiny random model of that type, built once."""
    root = tmp_path_factory.mktemp("architectures")
    built = {}

    def make(model_type):
        if model_type not in built:
            built[model_type] = build(model_type, root / model_type, tiny_model_dir)
        return built[model_type]

    return make


@pytest.mark.parametrize("model_type", ["mpnet", "deberta-v2"])
def test_an_encoder_without_sdpa_loads_with_eager_attention_and_pools(tiny, model_type):
    import poolkit
    from poolkit.encoding.model import load_encoder

    folder = tiny(model_type)
    encoder = load_encoder(str(folder))
    encoder.model  # noqa: B018 - loaded as transformers chooses
    assert encoder.attention == "eager" and not encoder.causal
    features = poolkit.pool(TEXTS, ["cls", "mean", "max"], model=str(folder))
    assert {name: f.shape for name, f in features.items()} == {n: (4, 32) for n in features}


def test_forcing_sdpa_on_mpnet_is_one_line_naming_the_option(tiny):
    import poolkit
    from poolkit.errors import PoolkitError

    with pytest.raises(PoolkitError, match=r"could not load model .*tiny|--attn-implementation "
                                           r"sdpa was asked for; 'auto' lets transformers"):
        poolkit.pool(TEXTS, ["mean"], model=str(tiny("mpnet")), attn_implementation="sdpa")


def test_eager_and_sdpa_states_agree_and_an_asked_implementation_keys_its_own_entry(
        tiny_model_dir, tmp_path):
    import poolkit

    cache = tmp_path / "cache"
    chosen = poolkit.pool(TEXTS, ["mean", "cls"], model=str(tiny_model_dir), cache_dir=cache,
                          cache_dtype="fp32")
    eager = poolkit.pool(TEXTS, ["mean", "cls"], model=str(tiny_model_dir), cache_dir=cache,
                         cache_dtype="fp32", attn_implementation="eager")
    for name in chosen:
        np.testing.assert_allclose(eager[name], chosen[name], atol=1e-5)
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 2
    again = poolkit.pool(TEXTS, ["mean"], model=str(tiny_model_dir), cache_dir=cache,
                         cache_dtype="fp32", attn_implementation="auto")  # auto: the first entry
    np.testing.assert_array_equal(again["mean"], chosen["mean"])
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 2


@pytest.mark.slow
def test_compiled_states_agree_with_eager_and_key_their_own_entry(tiny_model_dir, tmp_path):
    """--compile: the states of torch.compile's kernels, every layer and the last, within
    float32 rounding of eager ones, in an entry of their own."""
    import poolkit

    cache = tmp_path / "cache"
    for poolers in (["mean", "cls"], ["first_last_avg"]):  # the last layer; every layer
        eager = poolkit.pool(TEXTS, poolers, model=str(tiny_model_dir), cache_dir=cache,
                             cache_dtype="fp32")
        compiled = poolkit.pool(TEXTS, poolers, model=str(tiny_model_dir), cache_dir=cache,
                                cache_dtype="fp32", compile=True)
        for name in eager:
            assert np.abs(eager[name]).max() > 0.1
            np.testing.assert_allclose(compiled[name], eager[name], atol=1e-5)
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 4
    from poolkit.encoding.model import load_encoder

    encoder = load_encoder(str(tiny_model_dir), compile=True)
    assert encoder.encoding_model() is encoder.encoding_model()  # compiled once, kept


@pytest.mark.slow
def test_compile_that_cannot_compile_says_so_in_one_line(tiny_model_dir, tmp_path,
                                                         monkeypatch):
    """No C++ compiler for inductor: one line naming --compile, before any file is made."""
    import torch._dynamo
    import torch._inductor.config as inductor

    torch._dynamo.reset()  # nothing compiled earlier in this process, nor read from disk
    monkeypatch.setattr(inductor, "fx_graph_cache", False)
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(inductor.cpp, "cxx", (None, str(tmp_path / "no-such-compiler")))
    out = tmp_path / "run"
    data = write_rows(tmp_path / "d.csv")
    result = invoke(["run", "--data", data, "--model", tiny_model_dir, "--compile",
                     "--poolers", "mean", "--out", out, "--cache-dir", tmp_path / "c"])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert "--compile: torch.compile could not compile" in result.output, result.output
    assert not out.exists()


@pytest.mark.parametrize("model_type", DECODERS)
def test_a_decoder_pools_last_token_and_mean_as_its_own_forward_does(tiny, model_type):
    """Against transformers run on each text alone (no padding at all): poolkit pads
    right in batches of texts of other lengths, and its last_token and mean agree."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    import poolkit

    folder = tiny(model_type)
    got = poolkit.pool(TEXTS, ["last_token", "mean"], model=str(folder), cache_dtype="fp32")
    model = AutoModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    for i, text in enumerate(TEXTS):
        ids = tokenizer(text, return_tensors="pt")["input_ids"]  # (the tiny tokenizer is
        with torch.no_grad():  # BERT's: its token_type_ids would go into GPT-2's wte)
            states = model(input_ids=ids).last_hidden_state[0]
        np.testing.assert_allclose(got["last_token"][i], states[-1].numpy(), atol=1e-5)
        np.testing.assert_allclose(got["mean"][i], states.mean(0).numpy(), atol=1e-5)


def test_cls_on_a_decoder_fails_alone_with_why_and_the_run_says_attention_is_causal(
        tiny, tmp_path):
    data = tmp_path / "d.csv"
    write_rows(data, 40)
    result = invoke(["run", "--data", data, "--model", tiny("qwen2"), "--poolers",
                     "cls,mean,last_token", "--folds", "2", "--seeds", "1", "--epochs", "3",
                     "--out", tmp_path / "run"])
    assert result.exit_code == 3, result.output
    assert "is decoder-only: its attention is causal" in result.output
    assert "pooler 'cls' failed on layer 2: ValueError: the model is decoder-only: its first " \
           "token attends to nothing after it" in result.output
    summary = pd.read_csv(tmp_path / "run" / "summary.csv").set_index("pooler")
    assert summary.loc["mean", "status"] == "ok" and summary.loc["last_token", "status"] == "ok"


def test_the_architecture_list_holds_the_encoders_and_decoders_the_issue_names():
    encoders, decoders = text_architectures()
    assert set(NO_SDPA) - {"xlnet"} <= set(encoders) and "bert" in encoders
    assert set(DECODERS) <= set(decoders)
    assert "t5" not in encoders + decoders and "bart" not in encoders + decoders


@pytest.mark.slow
def test_the_architecture_matrix(tmp_path, tiny_model_dir):
    """Every text architecture of the installed transformers, tiny: each loads and pools
    with every fixed pooler, or is listed with why; a pooler that does not apply (cls on
    a decoder, bert_pooler without pooler weights) fails alone with a one-line reason;
    and a 2-fold run on each one that pools. Fails if SDPA is forced again (the NO_SDPA
    encoders would not load)."""
    import poolkit
    from poolkit.heads.base import HeadConfig

    encoders, decoders = text_architectures()
    data = tmp_path / "d.csv"
    write_rows(data, 40)
    rows, runs = [], {}
    for model_type in encoders + decoders:
        row = try_architecture(model_type, tmp_path, tiny_model_dir, FIXED_POOLERS)
        rows.append(row)
        if row["built"] or model_type in KNOWN_FAILURES:
            continue
        result = poolkit.run(data, model=str(tmp_path / model_type),
                             poolers=("mean", "last_token"), folds=2, seeds=1,
                             head=HeadConfig(max_epochs=3), out=tmp_path / "runs" / model_type)
        runs[model_type] = set(result.summary.loc[result.summary["status"] == "ok", "pooler"])
    by_type = {row["type"]: row for row in rows}
    not_built = {t: row["built"] for t, row in by_type.items() if row["built"]}
    assert all(not why.startswith("not one line") for why in not_built.values()), not_built
    assert set(NEEDS_MORE) & set(by_type) <= set(not_built)
    assert set(NO_SDPA) <= set(by_type) - set(not_built)
    for model_type, row in by_type.items():
        if row["built"]:
            continue
        failed = {p: why for p, why in row["pooled"].items() if why is not None}
        assert all(not why.startswith("not one line") for why in failed.values()), failed
        if model_type in KNOWN_FAILURES:
            assert failed and all(f"model '{tmp_path / model_type}' failed while encoding"
                                  in why for why in failed.values()), failed
            continue
        expected = set()
        if not row["pooler_weights"]:
            expected.add("bert_pooler")
            assert "no pretrained pooler weights" in failed["bert_pooler"]
        if row["causal"]:
            expected.add("cls")
            assert "decoder-only" in failed["cls"]
        assert set(failed) == expected, (model_type, failed)
        assert runs[model_type] == {"mean", "last_token"}, model_type
    assert len(by_type) - len(not_built) >= 90  # 99 of 118 with transformers 5.25


def test_a_decoder_without_a_pad_token_pads_under_its_mask(tiny, tmp_path):
    """GPT-2's tokenizer has no pad token: poolkit pads with id 0 where the mask is 0
    (what fills the padding never reaches a real token, as the mask keeps it out)."""
    import torch

    from poolkit.encoding.encode import encode_to_cache
    from poolkit.encoding.model import load_encoder

    encoder = load_encoder(str(tiny("gpt2")))
    encoder.tokenizer.pad_token = None
    assert encoder.tokenizer.pad_token_id is None
    cache, _ = encode_to_cache(encoder, TEXTS, tmp_path / "cache", dtype="fp32")
    for i, text in enumerate(TEXTS):
        ids = encoder.tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            alone = encoder.model(input_ids=ids).last_hidden_state[0].numpy()
        start = cache.starts[i]
        np.testing.assert_allclose(cache.states()[start : start + len(alone)], alone, atol=1e-5)


def _remote_code_folder(tiny_model_dir, folder):
    """The tiny BERT as a model type transformers does not know, with its own code in the
    folder (``auto_map``), as a Hub repository with remote code has it."""
    import json
    import shutil

    shutil.copytree(tiny_model_dir, folder)
    (folder / "custom_bert.py").write_text(
        "from transformers import BertConfig, BertModel\n\n\n"
        "class TinyCustomConfig(BertConfig):\n    model_type = 'tiny-custom'\n\n\n"
        "class TinyCustomModel(BertModel):\n    config_class = TinyCustomConfig\n")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="tiny-custom", architectures=["TinyCustomModel"],
                  auto_map={"AutoConfig": "custom_bert.TinyCustomConfig",
                            "AutoModel": "custom_bert.TinyCustomModel"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_model_with_its_own_code_runs_only_with_trust_remote_code(tiny_model_dir, tmp_path,
                                                                   monkeypatch):
    import poolkit
    from poolkit.errors import PoolkitError

    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    folder = _remote_code_folder(tiny_model_dir, tmp_path / "custom")
    with pytest.raises(PoolkitError, match=r"could not load model .*custom.*--trust-remote-code"):
        poolkit.pool(TEXTS, ["mean"], model=str(folder))
    features = poolkit.pool(TEXTS, ["mean"], model=str(folder), trust_remote_code=True)
    reference = poolkit.pool(TEXTS, ["mean"], model=str(tiny_model_dir))
    np.testing.assert_allclose(features["mean"], reference["mean"], atol=1e-6)


@pytest.mark.parametrize("model_type", ["gpt2", "qwen2"])
def test_a_max_length_past_a_decoders_positions_is_one_line(tiny, model_type):
    import poolkit
    from poolkit.errors import PoolkitError

    with pytest.raises(PoolkitError, match=r"--max-length 999 exceeds model .* limit 128"):
        poolkit.pool(TEXTS, ["mean"], model=str(tiny(model_type)), max_length=999)
