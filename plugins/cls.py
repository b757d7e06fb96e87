"""[CLS] pooling: the first token's state, as it comes out of the encoder."""

from poolkit import Pooler, hookimpl


class ClsPooler(Pooler):
    name = "cls"

    def setup(self, encoder):
        if encoder.causal:
            raise ValueError(
                "the model is decoder-only: its first token attends to nothing after it, so "
                "its state does not depend on the rest of the text; use last_token or mean"
            )

    def pool(self, hidden, mask):
        """``hidden`` ``(batch, seq, H)``, ``mask`` ``(batch, seq)`` -> ``(batch, H)``."""
        # [CLS] is always position 0 with Hugging Face tokenizers, padded or not.
        return hidden[:, 0]


@hookimpl
def register_poolers(register):
    register(ClsPooler())
