"""Turning texts into token ids, cut to the encoder's length limit."""

import numpy as np


class TokenIds:
    """Every text's token ids in one flat int32 array: ``ids[i]`` is text ``i``'s.

    A list of per-text arrays costs about a hundred bytes of Python object per
    text on top of the ids; this holds 4 bytes per token and 8 per text.
    """

    def __init__(self, flat: np.ndarray, lengths: np.ndarray):
        self.flat, self.lengths = flat, lengths
        self.starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i) -> np.ndarray:
        return self.flat[self.starts[i] : self.starts[i + 1]]

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def tokenize(encoder, texts, chunk: int = 4096) -> tuple:
    """``(ids, truncated)`` for an :class:`~poolkit.model.Encoder`: the texts'
    :class:`TokenIds` (special tokens included, cut to ``max_length``) and how many
    texts were longer than that.

    Tokenized in chunks, keeping only the ids: the tokenizer's full output
    (offsets, token strings, ...) for a large dataset takes far more memory
    than the ids themselves.
    """
    kwargs = dict(return_attention_mask=False, return_token_type_ids=False)
    parts, lengths, truncated = [], [], 0
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
        sizes = np.fromiter((len(x) for x in batch), dtype=np.int64, count=len(batch))
        parts.append(np.fromiter((i for x in batch for i in x), dtype=np.int32,
                                 count=int(sizes.sum())))
        lengths.append(sizes)
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    sizes = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    return TokenIds(flat, sizes), truncated
