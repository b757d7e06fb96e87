"""Last-token pooling: the state of each text's last real token (for BERT, [SEP]).

The usual pooling of decoder embedding models (e.g. E5-Mistral), here as a
baseline. Assumes right padding, as BERT tokenizers and poolkit pad: the last
real token of a row is at position (number of real tokens - 1).
"""

from poolkit import Pooler, hookimpl


class LastTokenPooler(Pooler):
    name = "last_token"

    def pool(self, hidden, mask):
        """``hidden`` ``(batch, seq, H)``, ``mask`` ``(batch, seq)`` -> ``(batch, H)``."""
        import torch  # here, not at the top: `poolkit plugins` stays fast

        last = (mask.long().sum(dim=1) - 1).clamp(min=0)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, last]


@hookimpl
def register_poolers(register):
    register(LastTokenPooler())
