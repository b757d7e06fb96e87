"""Masked reductions over token states, for pooling plugins.

Every function takes ``hidden`` ``(batch, seq, H)`` (any float dtype) and
``mask`` ``(batch, seq)`` (1 or ``True`` for real tokens, 0 for padding; int or
bool), reads only the real tokens, never writes into its inputs, and sums in
fp32 (an fp16 sum over hundreds of tokens can overflow). A text's result does
not depend on its batch's padding. torch is imported when first called, so a
plugin importing this module stays cheap to load.
"""


def token_count(mask):
    """``(batch, 1)`` float32: each text's number of real tokens (at least 1)."""
    return mask.bool().sum(dim=1, keepdim=True).clamp(min=1).float()


def masked_sum(hidden, mask, weights=None):
    """``(batch, H)`` float32: the sum of the real tokens' states, each times its
    weight in ``weights`` ``(batch, seq)`` when given."""
    padding = ~mask.bool().unsqueeze(-1)
    total = hidden.float().masked_fill(padding, 0.0)
    if weights is not None:
        total = total.mul(weights.float().unsqueeze(-1))
    return total.sum(dim=1)


def masked_mean(hidden, mask):
    """``(batch, H)`` float32: the mean of the real tokens' states."""
    return masked_sum(hidden, mask) / token_count(mask)


def masked_max(hidden, mask):
    """``(batch, H)`` in ``hidden``'s dtype: the per-dimension maximum over the real tokens.

    Padding is filled with the dtype's smallest value, not a literal like -1e9
    (which fp16 cannot hold), in a new tensor: the input stays as it was.
    """
    import torch

    padding = ~mask.bool().unsqueeze(-1)
    return hidden.masked_fill(padding, torch.finfo(hidden.dtype).min).amax(dim=1)
