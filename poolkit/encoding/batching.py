"""Batches of texts under a token budget, and the encoder's batch plan.

The plan is fixed before the encoder runs: which texts each batch holds and at
which token row its states go in a cache entry. So any batch can be encoded
and written by any process, in any order, and the entry comes out the same
bytes: that is what resuming and sharding an encoding rest on.
"""

import hashlib
from dataclasses import dataclass

import numpy as np


def token_budget_batches(lengths: np.ndarray, max_tokens: int, max_texts: int = 1 << 30):
    """Split consecutive texts into batches whose padded size stays in budget.

    Yields index arrays into ``lengths``: each batch's longest text times its
    number of texts is at most ``max_tokens`` (a batch always holds at least
    one text) and it holds at most ``max_texts`` texts. Padding stays small when
    ``lengths`` is sorted.
    """
    start = 0
    n = len(lengths)
    while start < n:
        end = start + 1
        width = int(lengths[start])
        while end < n and end - start < max_texts:
            new_width = max(width, int(lengths[end]))
            if new_width * (end - start + 1) > max_tokens:
                break
            width = new_width
            end += 1
        yield np.arange(start, end)
        start = end


@dataclass(frozen=True)
class BatchPlan:
    """The encoder's batches over ``N`` texts, longest first.

    ``order`` ``(N,)``: text indices, longest first (ties in input order).
    ``bounds`` ``(B + 1,)``: batch ``b`` is ``order[bounds[b]:bounds[b + 1]]``.
    ``offsets`` ``(B + 1,)``: batch ``b``'s states are token rows
    ``offsets[b]:offsets[b + 1]`` of each layer's block, text after text.
    ``starts`` ``(N,)``: each text's first token row (input order).
    ``lengths`` ``(N,)``: each text's number of tokens.
    """

    order: np.ndarray
    bounds: np.ndarray
    offsets: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    max_tokens: int
    max_texts: int | None

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def texts(self, batch: int) -> np.ndarray:
        """Indices of the texts in ``batch``, in the order their rows are written."""
        return self.order[self.bounds[batch] : self.bounds[batch + 1]]

    @property
    def total_tokens(self) -> int:
        return int(self.offsets[-1])

    def describe(self) -> dict:
        """What identifies the plan (a resume must continue the same one)."""
        digest = hashlib.sha256(np.ascontiguousarray(self.bounds).tobytes())
        digest.update(np.ascontiguousarray(self.lengths).tobytes())
        return {"budget": self.max_tokens, "max_texts": self.max_texts, "batches": len(self),
                "tokens": self.total_tokens, "sha256": digest.hexdigest()}


def plan_batches(lengths, max_tokens: int, max_texts: int | None = None) -> BatchPlan:
    """The :class:`BatchPlan` for texts of ``lengths`` tokens: longest first (on a GPU,
    running out of memory shows up in the first batch), under ``max_tokens`` padded
    positions and ``max_texts`` texts per batch."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    sizes = [len(b) for b in token_budget_batches(lengths[order], max_tokens,
                                                  max_texts or 1 << 30)]
    bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    rows = np.concatenate([[0], np.cumsum(lengths[order])]).astype(np.int64)
    starts = np.empty(len(lengths), dtype=np.int64)
    starts[order] = rows[:-1]
    return BatchPlan(order=order, bounds=bounds, offsets=rows[bounds], starts=starts,
                     lengths=lengths, max_tokens=int(max_tokens), max_texts=max_texts)
