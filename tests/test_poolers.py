"""The built-in poolers, got through the plugin manager as users get them, and
the plugins shipped in ``poolkit.plugins`` that are not built-ins yet.

References are independent of poolkit: Hugging Face's own ``pooler_output`` and
``BertPooler`` module, per-text means/maxima over each text's real tokens
sliced out of the padded batch, and small examples computed by hand.
"""

import math
import subprocess
import sys

import pytest
import torch
from conftest import ALL_POOLERS, BUILTIN_POOLERS, FIXED_POOLERS, hf_forward, plugin_pooler
from torch.testing import assert_close

from poolkit.pooling.manager import collect_poolers, get_plugin_manager

TEXTS = [
    "good",
    "the movie was really very good and the actor was great fun",
    "awful plot , dull story",
    "it was not boring but the film was so poor",
]
LOW_PRECISION = (torch.float16, torch.bfloat16)
ALL_DTYPES = (torch.float32, *LOW_PRECISION)


def reference(name, real):
    """What pooler ``name`` gives for one text's real-token states ``real`` ``(n, H)``."""
    n = real.shape[0]
    if name == "mean":
        return real.mean(dim=0)
    if name == "max":
        return real.max(dim=0).values
    if name == "mean_max":
        return torch.cat([real.mean(dim=0), real.max(dim=0).values])
    if name == "mean_sqrt_len":
        return real.sum(dim=0) / math.sqrt(n)
    if name == "weighted_mean":
        positions = torch.arange(1, n + 1, dtype=real.dtype)
        return (positions[:, None] * real).sum(dim=0) / positions.sum()
    if name == "last_token":
        return real[-1]
    raise KeyError(name)


@pytest.fixture(scope="module")
def batch(hf_model, hf_tokenizer):
    """``(output, mask)`` for TEXTS as one padded batch (texts of different lengths)."""
    output, mask = hf_forward(hf_model, hf_tokenizer, TEXTS)
    assert len(set(mask.sum(dim=1).tolist())) == len(TEXTS)  # everyone padded differently
    return output, mask


@pytest.fixture(scope="module")
def alone(hf_model, hf_tokenizer):
    """Each text's real-token states ``(1, L, H)``, encoded on its own (no padding)."""
    return [hf_forward(hf_model, hf_tokenizer, [text])[0].last_hidden_state for text in TEXTS]


def _garbage(shape, dtype, seed=0):
    """Huge finite values of both signs: what padding must never leak."""
    g = torch.Generator().manual_seed(seed)
    signs = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0)
    return (signs * torch.finfo(dtype).max / 4).to(dtype)


def _pad(states, width, dtype, seed=0):
    """Stack ``(1, L_i, H)`` states into ``(B, width, H)`` with garbage padding, and the mask."""
    hidden_size = states[0].shape[-1]
    hidden = _garbage((len(states), width, hidden_size), dtype, seed)
    mask = torch.zeros(len(states), width, dtype=torch.long)
    for row, s in enumerate(states):
        hidden[row, : s.shape[1]] = s[0].to(dtype)
        mask[row, : s.shape[1]] = 1
    return hidden, mask


def test_builtins_are_registered_by_their_own_modules():
    found = collect_poolers(get_plugin_manager())
    for name in BUILTIN_POOLERS:
        pooler, plugin = found[name]
        assert pooler.name == name
        assert plugin == f"poolkit.plugins.{name}"


def test_bert_pooler_equals_hugging_face_pooler_output(poolers, batch):
    output, mask = batch
    pooled = poolers["bert_pooler"].pool(output.last_hidden_state, mask)
    assert_close(pooled, output.pooler_output)


def test_bert_pooler_is_not_the_raw_cls_vector(poolers, batch):
    output, mask = batch
    pooled = poolers["bert_pooler"].pool(output.last_hidden_state, mask)
    assert not torch.allclose(pooled, output.last_hidden_state[:, 0], atol=1e-3)


def test_bert_pooler_setup_refuses_a_model_without_pooler_weights(tiny_model_dir, tmp_path):
    import shutil

    from transformers import BertConfig, BertModel

    from poolkit.encoding.model import load_encoder

    folder = tmp_path / "no-pooler"
    model = BertModel(BertConfig.from_pretrained(tiny_model_dir), add_pooling_layer=False)
    model.save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        if (tiny_model_dir / name).exists():
            shutil.copy(tiny_model_dir / name, folder / name)
    pooler = collect_poolers(get_plugin_manager())["bert_pooler"][0]
    with pytest.raises(ValueError, match="bert_pooler"):
        pooler.setup(load_encoder(str(folder)))


def test_bert_pooler_weights_come_from_the_checkpoint_without_building_the_model(tiny_encoder,
                                                                                 hf_model):
    from poolkit.encoding.model import Encoder

    fresh = Encoder(tiny_encoder.name, tiny_encoder.path, tiny_encoder.settings,
                    tiny_encoder.max_length)
    dense = fresh.weights("pooler.dense")
    assert fresh._model is None  # read from model.safetensors, no model built
    assert_close(dense["weight"], hf_model.pooler.dense.weight.detach())
    assert_close(dense["bias"], hf_model.pooler.dense.bias.detach())


def test_cls_is_the_first_token_state(poolers, batch):
    output, mask = batch
    assert_close(poolers["cls"].pool(output.last_hidden_state, mask),
                 output.last_hidden_state[:, 0], rtol=0, atol=0)


@pytest.mark.parametrize("name", [n for n in FIXED_POOLERS if n not in ("cls", "bert_pooler")])
def test_equal_a_per_text_reference_over_real_tokens(poolers, batch, name):
    output, mask = batch
    hidden = output.last_hidden_state
    expected = torch.stack([
        reference(name, hidden[i, : int(mask[i].sum())]) for i in range(len(TEXTS))
    ])
    assert_close(poolers[name].pool(hidden, mask), expected)


@pytest.mark.parametrize("mask_dtype", [torch.long, torch.int32, torch.bool])
@pytest.mark.parametrize("name", FIXED_POOLERS)
def test_output_shape_is_the_declared_dim(poolers, batch, name, mask_dtype):
    output, mask = batch
    hidden = output.last_hidden_state
    pooled = poolers[name].pool(hidden, mask.to(mask_dtype))
    assert pooled.shape == (len(TEXTS), poolers[name].output_dim(hidden.shape[-1]))
    assert pooled.is_floating_point()
    assert_close(pooled, poolers[name].pool(hidden, mask))


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("name", FIXED_POOLERS)
def test_padding_invariance(poolers, alone, name, dtype):
    """A text pooled alone equals the same text padded with garbage-filled columns."""
    pooler = poolers[name]
    for states in alone:
        length = states.shape[1]
        exact = states.to(dtype)
        by_itself = pooler.pool(exact, torch.ones(1, length, dtype=torch.long))
        for extra in (1, 7):
            hidden, mask = _pad([states], length + extra, dtype, seed=extra)
            padded = pooler.pool(hidden, mask)
            assert torch.isfinite(padded.float()).all()
            assert_close(padded, by_itself)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("name", FIXED_POOLERS)
def test_batch_invariance(poolers, alone, name, dtype):
    """A text's vector does not depend on what else is in its batch."""
    pooler = poolers[name]
    width = max(s.shape[1] for s in alone) + 2
    by_itself = [pooler.pool(*_pad([s], width, dtype, seed=1)) for s in alone]
    batches = [[0, 1, 2, 3], [3, 1], [2, 0, 0], [1]]
    for seed, members in enumerate(batches):
        hidden, mask = _pad([alone[i] for i in members], width, dtype, seed=seed + 10)
        pooled = pooler.pool(hidden, mask)
        for row, i in enumerate(members):
            assert_close(pooled[row], by_itself[i][0])


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("name", FIXED_POOLERS)
def test_low_precision_matches_fp32_reference(poolers, batch, hf_model, name, dtype):
    """fp16/bf16 inputs give the fp32 result of the same (rounded) values, no NaN/inf."""
    output, mask = batch
    hidden = output.last_hidden_state.to(dtype)
    padding = ~mask.bool()
    hidden = hidden.masked_fill(padding[..., None], torch.finfo(dtype).max / 4)
    pooled = poolers[name].pool(hidden, mask)
    assert pooled.dtype == dtype
    assert torch.isfinite(pooled.float()).all()
    upcast = hidden.float()
    lengths = mask.sum(dim=1).tolist()
    if name == "cls":
        expected = upcast[:, 0]
    elif name == "bert_pooler":
        with torch.no_grad():
            expected = hf_model.pooler(upcast)
    else:
        expected = torch.stack([reference(name, upcast[i, :n]) for i, n in enumerate(lengths)])
    assert_close(pooled, expected.to(dtype))


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("name", FIXED_POOLERS)
def test_single_real_token_row(poolers, hf_model, name, dtype):
    """A row with one real token (and huge padding) pools to that token alone."""
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(3, 6, 32, generator=g).to(dtype)
    mask = torch.tensor([[1, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    hidden = hidden.masked_fill(~mask.bool()[..., None], torch.finfo(dtype).max)
    pooled = poolers[name].pool(hidden, mask)
    assert torch.isfinite(pooled.float()).all()
    first = hidden[0, 0].float()
    if name == "bert_pooler":
        with torch.no_grad():
            expected = hf_model.pooler(first[None, None])[0]
    elif name == "mean_max":
        expected = torch.cat([first, first])
    else:
        expected = first  # every other pooler of a single token gives that token
    assert_close(pooled[0], expected.to(dtype))


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("name", ["mean", "max"])
def test_very_negative_real_states(poolers, name, dtype):
    """Real values far below any literal fill value (-1e4, -1e9) still win over the padding."""
    low = max(-torch.finfo(dtype).max / 2, -1e30)  # a mean of a few stays in range
    hidden = torch.full((2, 4, 32), low, dtype=dtype)
    hidden[1, 2] = low / 2
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])
    hidden = hidden.masked_fill(~mask.bool()[..., None], 0.0)  # zero padding beats them all
    pooled = poolers[name].pool(hidden, mask)
    assert torch.isfinite(pooled.float()).all()
    if name == "max":
        expected = torch.stack([torch.full((32,), low), torch.full((32,), low / 2)])
    else:
        expected = torch.stack([torch.full((32,), low), torch.full((32,), low * 5 / 6)])
    assert_close(pooled, expected.to(dtype))


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("name", FIXED_POOLERS)
def test_inputs_are_not_modified(poolers, alone, name, dtype):
    width = max(s.shape[1] for s in alone) + 3
    hidden, mask = _pad(alone, width, dtype)
    hidden_before, mask_before = hidden.clone(), mask.clone()
    poolers[name].pool(hidden, mask)
    assert torch.equal(hidden, hidden_before)
    assert torch.equal(mask, mask_before)


def test_bert_pooler_reads_task_checkpoints_whose_keys_carry_the_base_model_prefix(
        tiny_model_dir, tmp_path):
    """bert-base-uncased ships a BertForPreTraining checkpoint: keys 'bert.pooler.dense.*'."""
    import shutil

    from transformers import AutoModel, BertConfig, BertForPreTraining

    from poolkit.encoding.model import load_encoder

    folder = tmp_path / "pretraining"
    torch.manual_seed(1)
    BertForPreTraining(BertConfig.from_pretrained(tiny_model_dir)).save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        if (tiny_model_dir / name).exists():
            shutil.copy(tiny_model_dir / name, folder / name)
    pooler = collect_poolers(get_plugin_manager())["bert_pooler"][0]
    pooler.setup(load_encoder(str(folder)))
    model = AutoModel.from_pretrained(folder).eval()
    ids = torch.tensor([[2, 10, 11, 3]])
    with torch.no_grad():
        out = model(input_ids=ids)
    assert_close(pooler.pool(out.last_hidden_state, torch.ones_like(ids)), out.pooler_output)


# -- the plugins not in the built-in list yet: hand-computed examples -------------------

# Two texts, H = 2: three real tokens, and two real tokens; padding 100 leaks if unmasked.
HAND_HIDDEN = torch.tensor([
    [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [100.0, 100.0]],
    [[2.0, 0.0], [4.0, 8.0], [100.0, 100.0], [100.0, 100.0]],
])
HAND_MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])


@pytest.mark.parametrize("mask_dtype", [torch.long, torch.bool])
@pytest.mark.parametrize("name, expected", [
    ("mean_max", [[3.0, 4.0, 5.0, 6.0], [3.0, 4.0, 4.0, 8.0]]),
    ("mean_sqrt_len", [[9 / math.sqrt(3), 12 / math.sqrt(3)],
                       [6 / math.sqrt(2), 8 / math.sqrt(2)]]),
    # weights 1, 2, 3 (sum 6) and 1, 2 (sum 3)
    ("weighted_mean", [[(1 + 6 + 15) / 6, (2 + 8 + 18) / 6], [(2 + 8) / 3, (0 + 16) / 3]]),
    ("last_token", [[5.0, 6.0], [4.0, 8.0]]),  # rows len - 1: 2 and 1
])
def test_new_poolers_on_a_hand_computed_example(name, expected, mask_dtype):
    pooler = plugin_pooler(name)
    pooled = pooler.pool(HAND_HIDDEN, HAND_MASK.to(mask_dtype))
    assert pooler.output_dim(2) == len(expected[0])
    assert_close(pooled, torch.tensor(expected))


def test_first_last_avg_pools_a_tuple_of_first_and_last_layer():
    pooler = plugin_pooler("first_last_avg")
    assert pooler.layers == (1, -1)
    assert not pooler.trainable
    last = HAND_HIDDEN * 3 + torch.tensor([[[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [-7.0, 9.0]]])
    # (first + 3 * first) / 2 = 2 * first: twice the masked means [3, 4] and [3, 4].
    pooled = pooler.pool((HAND_HIDDEN, last), HAND_MASK)
    assert_close(pooled, torch.tensor([[6.0, 8.0], [6.0, 8.0]]))


def test_first_last_avg_is_simcse_avg_first_last_on_hugging_face_hidden_states(
        hf_model, hf_tokenizer):
    """SimCSE: mean over real tokens of (hidden_states[1] + hidden_states[-1]) / 2."""
    inputs = hf_tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = hf_model(**inputs, output_hidden_states=True).hidden_states
    mask = inputs["attention_mask"]
    expected = torch.stack([
        ((states[1][i] + states[-1][i]) / 2)[: int(mask[i].sum())].mean(dim=0)
        for i in range(len(TEXTS))
    ])
    pooled = plugin_pooler("first_last_avg").pool((states[1], states[-1]), mask)
    assert_close(pooled, expected)


def test_attention_starts_as_mean_pooling():
    pooler = plugin_pooler("attention")
    assert pooler.trainable and pooler.output_dim(2) == 2
    module = pooler.module(2)
    assert_close(module.query.detach(), torch.zeros(2))
    pooled = module(HAND_HIDDEN, HAND_MASK)
    assert pooled.dtype == torch.float32
    assert_close(pooled, torch.tensor([[3.0, 4.0], [3.0, 4.0]]))
    assert_close(pooled, plugin_pooler("mean").pool(HAND_HIDDEN, HAND_MASK))


def test_attention_with_a_large_one_hot_query_attends_to_the_highest_scoring_real_token():
    module = plugin_pooler("attention").module(2)
    with torch.no_grad():
        module.query.copy_(torch.tensor([0.0, 100.0]))
    # Scores follow the second coordinate: tokens [5, 6] and [4, 8] win; the
    # padding (100) would win if it were not masked.
    pooled = module(HAND_HIDDEN.half(), HAND_MASK.bool())
    assert pooled.dtype == torch.float32
    assert_close(pooled, torch.tensor([[5.0, 6.0], [4.0, 8.0]]))


def test_attention_output_and_query_gradient_follow_the_formula_text_by_text():
    """softmax(states @ q / sqrt(H)) over each text's real tokens, then the weighted
    sum; padding holds huge values that must reach neither the output nor the
    query's gradient."""
    hidden_size, lengths = 8, [5, 2, 7]
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(len(lengths), max(lengths), hidden_size, generator=gen)
    mask = (torch.arange(max(lengths)) < torch.tensor(lengths)[:, None]).long()
    module = plugin_pooler("attention").module(hidden_size)
    with torch.no_grad():
        module.query.copy_(torch.randn(hidden_size, generator=gen))
    # Padding that would outscore every real token if it were not masked.
    hidden = torch.where(mask.bool().unsqueeze(-1), hidden, 1e4 * module.query.detach().sign())
    weights = torch.randn(len(lengths), hidden_size, generator=gen)  # a loss's gradient

    (module(hidden, mask) * weights).sum().backward()
    query = module.query.detach().clone().requires_grad_()
    expected = torch.stack([
        torch.softmax(hidden[i, :n] @ query / hidden_size**0.5, dim=0) @ hidden[i, :n]
        for i, n in enumerate(lengths)
    ])
    (expected * weights).sum().backward()
    assert_close(module(hidden, mask), expected.detach())
    assert_close(module.query.grad, query.grad)


def test_attention_gives_each_call_fresh_parameters():
    pooler = plugin_pooler("attention")
    first, second = pooler.module(4), pooler.module(4)
    assert first.query is not second.query
    with torch.no_grad():
        first.query.fill_(1.0)
    assert_close(second.query.detach(), torch.zeros(4))


def test_new_plugins_import_without_torch():
    """`poolkit plugins` lists poolers without importing torch."""
    modules = ", ".join(f"poolkit.plugins.{m}" for m in ALL_POOLERS if m not in BUILTIN_POOLERS)
    code = f"import sys, {modules}; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
