"""Turning texts into token ids, cut to the encoder's length limit."""

import numpy as np


class TokenIds:
    """Every text's token ids in one flat int32 array: ``ids[i]`` is text ``i``'s.

    A list of per-text arrays costs about a hundred bytes of Python object per
    text on top of the ids; this holds 4 bytes per token and 8 per text.
    """

    def __init__(self, flat: np.ndarray, lengths: np.ndarray, pair_starts=None):
        self.flat, self.lengths = flat, lengths
        self.starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        #: pairs of texts: ``(N,)`` each item's first token of segment B (see :func:`segments`)
        self.pair_starts = pair_starts

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i) -> np.ndarray:
        return self.flat[self.starts[i] : self.starts[i + 1]]

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def tokenize(encoder, texts, chunk: int = 4096) -> tuple:
    """``(ids, truncated)`` for an :class:`~poolkit.encoding.model.Encoder`: the texts'
    :class:`TokenIds` (special tokens included, cut to ``max_length``) and how many
    texts were longer than that.

    The encoder's ``prompt`` (``--prompt``) is prepended to each text (to a pair's
    first), as sentence-transformers prepends it.

    Pairs ``(text, text_pair)`` are joined as the tokenizer joins them
    (``[CLS] a [SEP] b [SEP]`` for BERT), cut by ``longest_first`` (a token off
    the longer side at a time), and ``ids.pair_starts`` holds where each pair's
    second text begins (its first token: the tokenizer's sequence id 1).

    Tokenized in chunks, keeping only the ids: the tokenizer's full output
    (offsets, token strings, ...) for a large dataset takes far more memory
    than the ids themselves.
    """
    pairs = is_pairs(texts)
    kwargs = dict(return_attention_mask=False, return_token_type_ids=False)
    parts, lengths, starts, truncated = [], [], [], 0

    prompt = getattr(encoder, "prompt", None) or ""

    def call(items, **options):
        if not pairs:
            return encoder.tokenizer([prompt + text for text in items], **options, **kwargs)
        first, second = zip(*items) if items else ((), ())
        return encoder.tokenizer([prompt + text for text in first], list(second), **options,
                                 **kwargs)

    for start in range(0, len(texts), chunk):
        part = list(texts[start : start + chunk])
        encoded = call(part, truncation="longest_first" if pairs else True,
                       max_length=encoder.max_length)
        batch = encoded["input_ids"]
        at_limit = [i for i, x in enumerate(batch) if len(x) == encoder.max_length]
        if at_limit:
            # verbose=False: poolkit truncates and warns itself; transformers' "Token
            # indices sequence length is longer than ..." would only confuse
            full = call([part[i] for i in at_limit], verbose=False)["input_ids"]
            truncated += sum(len(x) > encoder.max_length for x in full)
        if pairs:
            starts.append(np.array([_second_start(encoded.sequence_ids(i), len(x))
                                    for i, x in enumerate(batch)], dtype=np.int64))
        sizes = np.fromiter((len(x) for x in batch), dtype=np.int64, count=len(batch))
        parts.append(np.fromiter((i for x in batch for i in x), dtype=np.int32,
                                 count=int(sizes.sum())))
        lengths.append(sizes)
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    sizes = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    pair_starts = np.concatenate(starts) if starts else None
    return TokenIds(flat, sizes, pair_starts), truncated


def _second_start(sequence_ids: list, length: int) -> int:
    """The first position of the second text (sequence id 1), or ``length`` when
    truncation left none of it."""
    return next((i for i, s in enumerate(sequence_ids) if s == 1), length)


def segments(pair_starts, lengths, width: int):
    """``(batch, width)`` int64 segment ids of a batch of pairs: 1 from each pair's
    second text on (its tokens and the special tokens after them), 0 before it and
    in the padding after ``lengths``. For BERT these are its ``token_type_ids``:
    ``[CLS] a [SEP]`` 0, ``b [SEP]`` 1."""
    import torch

    positions = torch.arange(width).unsqueeze(0)
    starts = torch.as_tensor(np.asarray(pair_starts), dtype=torch.int64).unsqueeze(1)
    ends = torch.as_tensor(np.asarray(lengths), dtype=torch.int64).unsqueeze(1)
    return ((positions >= starts) & (positions < ends)).long()


def is_pairs(texts) -> bool:
    """Whether ``texts`` are pairs ``(text, text_pair)`` rather than single texts."""
    return len(texts) > 0 and isinstance(texts[0], tuple)
