"""[CLS] pooling: the first token's state, as it comes out of the encoder."""

from poolkit import Pooler, hookimpl


class ClsPooler(Pooler):
    name = "cls"

    def pool(self, hidden, mask):
        """``hidden`` ``(batch, seq, H)``, ``mask`` ``(batch, seq)`` -> ``(batch, H)``."""
        # [CLS] is always position 0 with Hugging Face tokenizers, padded or not.
        return hidden[:, 0]


@hookimpl
def register_poolers(register):
    register(ClsPooler())
