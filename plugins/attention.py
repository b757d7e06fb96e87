"""Attention pooling: a softmax-weighted mean of the real tokens with one learned query.

``scores = hidden @ q / sqrt(H)`` over the real tokens, ``softmax`` over the
sequence, then the weighted sum of the states. ``q`` (size ``H``) is trained
with each head. It starts at zeros, where every real token scores the same: at
initialisation this pooler *is* mean pooling. The output is fp32 whatever the
input dtype.
"""

from poolkit import Pooler, hookimpl


class AttentionPooler(Pooler):
    name = "attention"
    trainable = True

    def module(self, hidden_size):
        import torch  # here, not at the top: `poolkit plugins` stays fast

        class AttentionPooling(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.query = torch.nn.Parameter(torch.zeros(hidden_size))

            def forward(self, hidden, mask):
                """``hidden`` ``(batch, seq, H)``, ``mask`` ``(batch, seq)`` -> ``(batch, H)``."""
                padding = ~mask.bool()
                states = hidden.float()  # fp32 throughout
                scores = (states @ self.query) / hidden_size**0.5
                # Padding scores become the dtype's minimum, so their softmax
                # weights are exactly 0 and (finite) padding values add nothing to the sum.
                scores = scores.masked_fill(padding, torch.finfo(scores.dtype).min)
                weights = scores.softmax(dim=1)
                # (batch, 1, seq) @ (batch, seq, H): the weighted sum as one
                # batched matmul, with no (batch, seq, H) temporary in forward
                # or backward (far faster than multiply-and-sum).
                return torch.bmm(weights.unsqueeze(1), states).squeeze(1)

        return AttentionPooling()


@hookimpl
def register_poolers(register):
    register(AttentionPooler())
