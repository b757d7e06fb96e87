"""Property tests of the pooler contract for every fixed single-layer pooler (hypothesis):
the built-ins and those in ``poolkit.plugins`` not in the built-in list yet.

For random batches (random real lengths 1..L with at least one single-token
row, random padding width, huge finite garbage in the padded positions, random
batch composition and order, fp32/fp16/bf16, any of the mask dtypes), each
text's pooled vector equals that text pooled alone with no padding, nothing is
NaN or inf, and the inputs are left untouched.
"""

import pytest
import torch
from conftest import FIXED_POOLERS
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

HIDDEN = 32  # the tiny model's hidden size (bert_pooler uses its weights)
MAX_LEN = 12
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Batched vs. alone may differ by the rounding of one fp32 reduction cast to the dtype.
TOLERANCE = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}


@st.composite
def batches(draw, dtype):
    """``(texts, members, width, garbage_scale, mask_dtype, seed)`` for one padded batch.

    ``texts`` are real lengths of distinct texts (one of them a single token),
    ``members`` which text each batch row holds (repeats and any order allowed).
    """
    lengths = draw(st.lists(st.integers(1, MAX_LEN), min_size=0, max_size=4))
    lengths.insert(draw(st.integers(0, len(lengths))), 1)  # always a one-token text
    members = draw(st.lists(st.integers(0, len(lengths) - 1), min_size=1, max_size=6))
    members.append(lengths.index(1))  # ... and it is in the batch
    members = draw(st.permutations(members))
    width = max(lengths[i] for i in members) + draw(st.integers(0, 5))
    finfo = torch.finfo(dtype)
    garbage = draw(st.sampled_from([0.0, 1.0, 1e4, finfo.max / 4, finfo.max]))
    # Real states from tiny to far below any literal fill value (-1e4, -1e9), yet finite
    # in the dtype: |x| <= 3 * scale.
    scale = draw(st.sampled_from([1e-3, 1.0, 100.0, 2e4 if dtype == torch.float16 else 1e30]))
    mask_dtype = draw(st.sampled_from([torch.long, torch.int32, torch.bool]))
    seed = draw(st.integers(0, 2**31 - 1))
    return lengths, members, width, garbage, scale, mask_dtype, seed


def _build(lengths, members, width, garbage, scale, mask_dtype, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    texts = [(torch.randn(n, HIDDEN, generator=g).clamp(-3, 3) * scale).to(dtype)
             for n in lengths]
    signs = torch.where(torch.rand(len(members), width, HIDDEN, generator=g) < 0.5, -1.0, 1.0)
    noise = torch.rand(len(members), width, HIDDEN, generator=g) * 0.5 + 0.5
    hidden = (signs * noise * garbage).to(dtype)  # finite: |x| <= finfo.max
    mask = torch.zeros(len(members), width, dtype=torch.long)
    for row, i in enumerate(members):
        hidden[row, : lengths[i]] = texts[i]
        mask[row, : lengths[i]] = 1
    return texts, hidden, mask.to(mask_dtype)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("name", FIXED_POOLERS)
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_pooled_vector_equals_the_text_pooled_alone(poolers, name, dtype_name, data):
    dtype = DTYPES[dtype_name]
    pooler = poolers[name]
    drawn = data.draw(batches(dtype))
    if name == "mean_sqrt_len":
        # sum / sqrt(n) grows with n: states near the dtype's limit give a true
        # result out of its range (inf is then the right answer, not a bug).
        assume(3 * drawn[4] * MAX_LEN**0.5 < torch.finfo(dtype).max)
    texts, hidden, mask = _build(*drawn, dtype)
    assert torch.isfinite(hidden.float()).all()
    hidden_before, mask_before = hidden.clone(), mask.clone()

    pooled = pooler.pool(hidden, mask)

    assert torch.equal(hidden, hidden_before), "pool() wrote into hidden"
    assert torch.equal(mask, mask_before), "pool() wrote into mask"
    assert mask.dtype == mask_before.dtype
    assert pooled.shape == (len(drawn[1]), pooler.output_dim(HIDDEN))
    assert pooled.dtype == dtype
    assert torch.isfinite(pooled.float()).all(), "NaN/inf in the pooled vectors"
    scale = drawn[4]
    tolerance = dict(TOLERANCE[dtype])
    tolerance["atol"] *= max(scale, 1.0)
    for row, i in enumerate(drawn[1]):
        states = texts[i].unsqueeze(0)
        alone = pooler.pool(states, torch.ones(1, states.shape[1], dtype=mask.dtype))
        assert torch.isfinite(alone.float()).all()
        assert_close(pooled[row], alone[0], **tolerance,
                     msg=lambda m: f"row {row} (text {i}, {texts[i].shape[0]} tokens): {m}")
