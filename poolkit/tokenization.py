"""Turning texts into token ids, cut to the encoder's length limit."""

import numpy as np


def tokenize(encoder, texts, chunk: int = 4096) -> tuple:
    """``(ids, truncated)`` for an :class:`~poolkit.model.Encoder`: int32 token ids per text (special tokens included, cut
    to ``max_length``) and how many texts were longer than that.

    Tokenized in chunks, keeping only the ids: the tokenizer's full output
    (offsets, token strings, ...) for a large dataset takes far more memory
    than the ids themselves.
    """
    kwargs = dict(return_attention_mask=False, return_token_type_ids=False)
    ids, truncated = [], 0
    for start in range(0, len(texts), chunk):
        part = list(texts[start : start + chunk])
        batch = encoder.tokenizer(part, truncation=True, max_length=encoder.max_length,
                                  **kwargs)["input_ids"]
        at_limit = [i for i, x in enumerate(batch) if len(x) == encoder.max_length]
        if at_limit:
            # verbose=False: poolkit truncates and warns itself; transformers' "Token
            # indices sequence length is longer than ..." would only confuse
            full = encoder.tokenizer([part[i] for i in at_limit], verbose=False,
                                     **kwargs)["input_ids"]
            truncated += sum(len(x) > encoder.max_length for x in full)
        ids.extend(np.asarray(x, dtype=np.int32) for x in batch)
    return ids, truncated
