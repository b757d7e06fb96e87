"""First-last average pooling: the masked mean over real tokens of (first layer + last layer) / 2.

SimCSE's ``avg_first_last`` pooler (Gao et al., 2021; ``Pooler`` in
princeton-nlp/SimCSE's ``simcse/models.py``), which averages
``hidden_states[1]`` (the first transformer layer, not the embeddings output)
and ``hidden_states[-1]``.
"""

from poolkit import Pooler, hookimpl


class FirstLastAvgPooler(Pooler):
    name = "first_last_avg"
    layers = (1, -1)

    def pool(self, hidden, mask):
        first, last = hidden
        padding = ~mask.bool().unsqueeze(-1)
        # Accumulate in fp32: an fp16 sum over hundreds of tokens can overflow.
        both = (first.float() + last.float()) / 2
        total = both.masked_fill(padding, 0.0).sum(dim=1)
        count = (~padding).sum(dim=1).clamp(min=1)
        return (total / count).to(last.dtype)


@hookimpl
def register_poolers(register):
    register(FirstLastAvgPooler())
