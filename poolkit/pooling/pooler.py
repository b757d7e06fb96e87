"""The base class every pooling plugin subclasses."""


class Pooler:
    """Turns token states into one vector per text.

    Subclasses set ``name`` and implement :meth:`pool`. Override
    :meth:`output_dim` when the output width is not the encoder's hidden size,
    and :meth:`setup` when the pooler needs something from the encoder (e.g.
    its pretrained weights).

    Contract (checked by poolkit at run time):

    - ``pool(hidden, mask)`` gets ``hidden`` ``(batch, seq, hidden_size)``
      float and ``mask`` ``(batch, seq)`` with 1 for real tokens ([CLS] and
      [SEP] included) and 0 for padding; returns ``(batch, output_dim)``.
    - Inputs are read-only: never write into them.
    - A text's vector must not depend on its batch's padding or other texts.

    Layers: a pooler with ``layers = None`` (the default) pools one layer's
    states and is run on every layer that ``--layers`` selects. A pooler that
    combines layers sets ``layers`` to a tuple of hidden-state indices
    (Hugging Face's ``hidden_states`` numbering: 0 = embeddings output,
    1..L = transformer layers, negative counts from the last, -1 = last) and
    its ``pool`` receives ``hidden`` as a tuple of ``(batch, seq, H)``
    tensors in that order.

    Pairs of texts (``--text-pair-col``): every pooler pools the joined sequence
    (``[CLS] a [SEP] b [SEP]``) as it pools a single text. A pooler that needs to
    know where the second text begins sets ``segments = True``: its ``pool`` is
    then called as ``pool(hidden, mask, segments)`` with ``segments`` ``(batch,
    seq)`` int64, 1 on the second text's tokens (and the special tokens after
    them: BERT's ``token_type_ids``), 0 on the first's and on padding. Such a
    pooler pools pairs only: runs on single texts leave it out unless it is
    named, and then it fails alone.

    Trainable poolers set ``trainable = True`` and implement :meth:`module`
    instead of :meth:`pool`: a fresh ``torch.nn.Module`` per head, whose
    ``forward(hidden, mask)`` follows the same contract and whose parameters
    are trained jointly with the head on the cached token states.
    """

    #: Unique name, used on the command line and in results.
    name: str = ""
    #: ``None``: pool one layer (each selected); a tuple of layer indices: combine those.
    layers: tuple | None = None
    #: ``True``: :meth:`module` gives parameters trained with each head.
    trainable: bool = False
    #: ``True``: pools pairs of texts, ``pool(hidden, mask, segments)`` (see above).
    segments: bool = False

    def output_dim(self, hidden_size: int) -> int:
        """Width ``D`` of the pooled vector for an encoder of ``hidden_size``."""
        return hidden_size

    def setup(self, encoder) -> None:
        """Called once with the encoder before pooling.

        ``encoder.weights("pooler.dense")`` reads pretrained tensors from the
        checkpoint (``None`` when it has none); ``encoder.model`` is the loaded
        ``transformers`` model (eval mode, CPU), loaded on first use;
        ``encoder.config`` and ``encoder.hidden_size`` describe it;
        ``encoder.causal`` says whether its attention is causal (decoder-only models:
        a token sees only those before it).

        With ``--finetune``, a copy of the pooler is set up again against the
        model being trained: there ``encoder.weights(...)`` returns that model's
        live parameters, so a pooler that uses them as given (``bert_pooler``'s
        ``pooler.dense``) trains them; one that copies them keeps them fixed.
        """

    def pool(self, hidden, mask):
        """Pool ``hidden`` ``(batch, seq, H)`` under ``mask`` ``(batch, seq)``
        into ``(batch, output_dim(H))``."""
        raise NotImplementedError

    def module(self, hidden_size: int):
        """Trainable poolers: a new ``torch.nn.Module`` with ``forward(hidden, mask)``
        returning ``(batch, output_dim(hidden_size))``; called once per head,
        under that head's seed."""
        raise NotImplementedError(f"pooler {self.name!r} sets trainable but has no module()")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
