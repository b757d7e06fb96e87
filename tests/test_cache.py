"""The ragged hidden-state cache: layout on disk, batching back out, crash safety."""

import numpy as np
import pytest
import torch
from conftest import BUILTIN_POOLERS, hf_forward
from torch.testing import assert_close

from poolkit.encoding.cache import HiddenStateCache
from poolkit.encoding.encode import encode_to_cache
from poolkit.encoding.model import load_encoder
from poolkit.errors import PoolkitError
from poolkit.identity import texts_digest
from poolkit.pooling.features import pool_cache, setup_poolers
from poolkit.pooling.manager import collect_poolers, get_plugin_manager

TEXTS = [
    "fun",
    "the story was really very good and the actor was great",
    "",
    "awful plot",
    "it was not boring , but the film was so dull and the plot was poor",
    "good movie !",
]


@pytest.fixture(scope="module")
def reference(hf_model, hf_tokenizer):
    output, mask = hf_forward(hf_model, hf_tokenizer, TEXTS)
    lengths = mask.sum(dim=1).tolist()
    return [output.last_hidden_state[i, :n] for i, n in enumerate(lengths)]


@pytest.fixture
def cache(tiny_model_dir, tmp_path):
    """An fp32 entry written over several encoder batches (two texts each)."""
    encoder = load_encoder(str(tiny_model_dir))
    entry, ran = encode_to_cache(encoder, TEXTS, tmp_path / "c", dtype="fp32", max_texts=2)
    assert ran
    return entry


def test_layout_holds_each_texts_real_tokens_in_input_order(cache, reference):
    assert len(cache) == len(TEXTS)
    assert cache.lengths.tolist() == [len(r) for r in reference]
    assert cache.tokens.shape == (1, sum(len(r) for r in reference), 32)
    assert cache.meta["dtype"] == "fp32"
    for i, states in enumerate(reference):
        stored = np.array(cache.states()[cache.starts[i] : cache.starts[i] + cache.lengths[i]])
        assert_close(torch.from_numpy(stored), states, atol=1e-5, rtol=1e-4)
    reopened = HiddenStateCache(cache.path)
    assert reopened.starts.tolist() == cache.starts.tolist()


@pytest.mark.parametrize("max_tokens", [1, 20, 45, 10_000])
def test_batches_rebuild_every_text_once(cache, reference, max_tokens):
    seen = []
    for indices in cache.batches(max_tokens):
        hidden, mask = cache.padded(indices)
        assert hidden.dtype == torch.float32 and mask.shape == hidden.shape[:2]
        assert len(indices) == 1 or hidden.shape[0] * hidden.shape[1] <= max_tokens
        for row, i in enumerate(indices):
            n = len(reference[i])
            assert mask[row].tolist() == [1] * n + [0] * (mask.shape[1] - n)
            assert_close(hidden[row, :n], reference[i], atol=1e-5, rtol=1e-4)
            assert not hidden[row, n:].any()
        seen.extend(indices.tolist())
    assert sorted(seen) == list(range(len(TEXTS)))


def test_pooling_does_not_depend_on_the_pooling_batch_size(cache, tiny_model_dir):
    found = collect_poolers(get_plugin_manager())
    poolers = {name: found[name][0] for name in BUILTIN_POOLERS}
    assert setup_poolers(poolers, load_encoder(str(tiny_model_dir)))[1] == {}
    one_batch, failures = pool_cache(cache, poolers)
    assert failures == {}
    many, failures = pool_cache(cache, poolers, max_batch_tokens=15)
    assert failures == {}
    for name in BUILTIN_POOLERS:
        assert_close(many[name], one_batch[name])  # equal up to float rounding


def test_without_a_progress_bar_encoding_logs_progress_lines(tiny_model_dir, tmp_path,
                                                             monkeypatch):
    """A batch job's log (stderr not a terminal) still hears from a long encoding."""
    import poolkit.encoding.encode as encoding

    encoder = load_encoder(str(tiny_model_dir))

    def progress_lines(folder, **options):
        lines = []
        encode_to_cache(encoder, TEXTS, tmp_path / folder, dtype="fp32", max_texts=2,
                        log=lines.append, **options)
        return [line for line in lines if line.startswith("encoding:")]

    monkeypatch.setattr(encoding, "PROGRESS_EVERY", 0.0)  # a line per batch
    lines = progress_lines("every")
    assert len(lines) == 3  # 6 texts, 2 per batch
    assert lines[-1].startswith("encoding: 100% of ") and "6 texts this run" in lines[-1]
    assert all("tokens/s" in line and "s left" in line for line in lines)
    monkeypatch.setattr(encoding, "PROGRESS_EVERY", 3600.0)
    assert len(progress_lines("last")) == 1  # only the closing line
    assert progress_lines("bar", progress=True) == []  # the bar says it instead


def test_encoder_batch_size_does_not_change_the_states(tiny_model_dir, tmp_path, cache):
    encoder = load_encoder(str(tiny_model_dir))
    single, _ = encode_to_cache(encoder, TEXTS, tmp_path / "other", dtype="fp32")
    for i in range(len(TEXTS)):
        a = cache.states()[cache.starts[i] : cache.starts[i] + cache.lengths[i]]
        b = single.states()[single.starts[i] : single.starts[i] + single.lengths[i]]
        assert_close(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-4)


def test_a_crash_while_encoding_resumes_from_the_last_complete_batch(
    tiny_model_dir, tmp_path, monkeypatch
):
    from transformers import BertModel

    import poolkit.encoding.encode

    monkeypatch.setattr(poolkit.encoding.encode, "CHECKPOINT_EVERY", 1)
    original = BertModel.forward
    calls = []

    def crash_on_third_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory (simulated)")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BertModel, "forward", crash_on_third_batch)
    root = tmp_path / "c"
    encoder = load_encoder(str(tiny_model_dir))
    with pytest.raises(PoolkitError, match=r"failed while encoding: RuntimeError: out of memory"):
        encode_to_cache(encoder, TEXTS, root, dtype="fp32", max_texts=2)
    # no entry that looks complete: only the partial one, which records its progress
    assert [p.name.endswith(".partial") for p in root.iterdir()] == [True]

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    calls.clear()
    monkeypatch.setattr(BertModel, "forward", counting)
    resumed, ran = encode_to_cache(encoder, TEXTS, root, dtype="fp32", max_texts=2)
    batches = -(-len(TEXTS) // 2)
    assert ran and len(calls) == batches - 2  # the two finished batches are not redone
    assert [p.name for p in root.iterdir()] == [resumed.path.name]

    fresh, _ = encode_to_cache(encoder, TEXTS, tmp_path / "fresh", dtype="fp32", max_texts=2)
    assert_close(np.asarray(resumed.tokens), np.asarray(fresh.tokens))
    assert resumed.lengths.tolist() == fresh.lengths.tolist()
    for i in range(len(TEXTS)):
        a = resumed.states()[resumed.starts[i] : resumed.starts[i] + resumed.lengths[i]]
        b = fresh.states()[fresh.starts[i] : fresh.starts[i] + fresh.lengths[i]]
        assert_close(np.array(a), np.array(b))


def test_texts_digest_keeps_text_boundaries():
    assert texts_digest(["ab", "c"]) != texts_digest(["a", "bc"])
    assert texts_digest(["a", "b"]) != texts_digest(["b", "a"])
    assert texts_digest(["a", "b"]) == texts_digest(iter(["a", "b"]))


def test_batches_written_in_any_order_by_several_writers_give_the_same_entry(tiny_model_dir,
                                                                              tmp_path):
    """The batch plan fixes every batch's rows before encoding: one writer doing the
    odd batches backwards, then another (a resume) doing the even ones, give the bytes
    of a plain in-order encoding."""
    from poolkit.encoding.batching import plan_batches
    from poolkit.encoding.cache import CacheWriter, entry_name
    from poolkit.encoding.encode import encode_batches
    from poolkit.encoding.tokenization import tokenize

    encoder = load_encoder(str(tiny_model_dir))
    fresh, _ = encode_to_cache(encoder, TEXTS, tmp_path / "fresh", max_texts=1)
    ids, _ = tokenize(encoder, TEXTS)
    plan = plan_batches([len(x) for x in ids], 1024, 1)
    assert len(plan) == len(TEXTS)
    layers = [encoder.num_layers]
    root = tmp_path / "shuffled"
    name = fresh.path.name
    assert name == entry_name(fresh.key, layers)
    meta = {k: fresh.meta[k] for k in ("identity", "truncated", "attention")}
    common = dict(device="cpu", compute="fp32", layers=layers, all_layers=False,
                  pad_id=encoder.tokenizer.pad_token_id)

    first = CacheWriter(root, name, encoder.hidden_size, "fp16", meta, plan, layers)
    odd = [b for b in range(len(plan)) if b % 2][::-1]
    encode_batches(encoder.model, ids, plan, odd, first, **common)
    first.checkpoint()
    first.close()

    second = CacheWriter(root, name, encoder.hidden_size, "fp16", meta, plan, layers)
    assert second.done == set(odd)
    even = [b for b in range(len(plan)) if b not in second.done]
    encode_batches(encoder.model, ids, plan, even, second, **common)
    second.meta["encode_seconds"] = fresh.meta["encode_seconds"]
    entry = second.finish()

    for file in ("tokens.bin", "index.npz", "meta.json"):
        assert (entry.path / file).read_bytes() == (fresh.path / file).read_bytes(), file


def test_a_gpu_batch_holds_fewer_tokens_for_wider_models():
    from poolkit.encoding.encode import default_batch_tokens

    assert default_batch_tokens("cpu", 4096) == default_batch_tokens("cpu") == 1024
    assert default_batch_tokens("cuda") == default_batch_tokens("cuda:1", 1024) == 65536
    assert default_batch_tokens("cuda", 4096) == 16384  # a 7-8 B decoder's width
    assert default_batch_tokens("cuda", 3584) * 3584 <= 65536 * 1024
