"""Poolers for pairs of texts (``--text-pair-col``): each text of the pair pooled on its own.

The encoder reads a pair joined, ``[CLS] a [SEP] b [SEP]``, so every token of ``a``
has attended to ``b`` and back (a cross-encoder). These poolers ask for the
segment ids (``segments = True``) and take each text's own mean:

- ``mean_a_b``: ``[mean(a); mean(b)]``, width ``2 * H``;
- ``sbert_pair``: ``[u; v; |u - v|; u * v]`` of the two means ``u``, ``v``, width
  ``4 * H``: Sentence-BERT's classification features (Reimers and Gurevych 2019,
  section 3, with the element-wise product InferSent and SentEval's pair tasks add).

Segment ``a`` is ``[CLS] a [SEP]``, segment ``b`` is ``b [SEP]`` (BERT's
``token_type_ids``): each mean takes its text's special tokens too, as a mean over a
text encoded alone does.
"""

from poolkit import Pooler, hookimpl, ops


def _segment_means(hidden, mask, segments):
    """``(u, v)``: the means of the first and the second text's real tokens."""
    real = mask.bool()
    first = ops.masked_mean(hidden, real & (segments == 0))
    second = ops.masked_mean(hidden, real & (segments == 1))
    return first, second


class MeanABPooler(Pooler):
    name = "mean_a_b"
    segments = True

    def output_dim(self, hidden_size):
        return 2 * hidden_size

    def pool(self, hidden, mask, segments):
        """``hidden`` ``(batch, seq, H)``, ``mask`` and ``segments`` ``(batch, seq)``
        -> ``(batch, 2H)``."""
        import torch  # here, not at the top: `poolkit plugins` stays fast

        return torch.cat(_segment_means(hidden, mask, segments), dim=-1)


class SbertPairPooler(Pooler):
    name = "sbert_pair"
    segments = True

    def output_dim(self, hidden_size):
        return 4 * hidden_size

    def pool(self, hidden, mask, segments):
        """``hidden`` ``(batch, seq, H)``, ``mask`` and ``segments`` ``(batch, seq)``
        -> ``(batch, 4H)``."""
        import torch

        u, v = _segment_means(hidden, mask, segments)
        return torch.cat([u, v, (u - v).abs(), u * v], dim=-1)


@hookimpl
def register_poolers(register):
    register(MeanABPooler())
    register(SbertPairPooler())
