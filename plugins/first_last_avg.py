"""First-last average pooling: the masked mean over real tokens of (first layer + last layer) / 2.

SimCSE's ``avg_first_last`` pooler (Gao et al., 2021; ``Pooler`` in
princeton-nlp/SimCSE's ``simcse/models.py``), which averages
``hidden_states[1]`` (the first transformer layer, not the embeddings output)
and ``hidden_states[-1]``.
"""

from poolkit import Pooler, hookimpl, ops


class FirstLastAvgPooler(Pooler):
    name = "first_last_avg"
    layers = (1, -1)

    def pool(self, hidden, mask):
        """``hidden`` a tuple of two ``(batch, seq, H)`` (layer 1, last layer), ``mask``
        ``(batch, seq)`` -> ``(batch, H)``."""
        first, last = hidden
        both = (first.float() + last.float()) / 2
        return ops.masked_mean(both, mask).to(last.dtype)


@hookimpl
def register_poolers(register):
    register(FirstLastAvgPooler())
