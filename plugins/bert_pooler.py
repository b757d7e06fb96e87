"""BertPooler: ``tanh(dense(hidden[:, 0]))`` with the model's pretrained weights.

This is what Hugging Face returns as ``pooler_output``; it is *not* the raw
[CLS] vector (that is the ``cls`` pooler).
"""

from poolkit import Pooler, hookimpl


class PretrainedBertPooler(Pooler):
    name = "bert_pooler"

    def __init__(self):
        self.weight = None
        self.bias = None

    def setup(self, encoder):
        dense = encoder.weights("pooler.dense")
        if dense is None:
            raise ValueError(
                "the model has no pretrained pooler weights (pooler.dense); "
                "leave out 'bert_pooler' for this model"
            )
        # .float() of float32 weights is the tensor itself: under --finetune these are the
        # trained model's live parameters, so its pooler.dense learns through this pooler
        self.weight = dense["weight"].float()
        self.bias = dense["bias"].float()

    def pool(self, hidden, mask):
        """``hidden`` ``(batch, seq, H)``, ``mask`` ``(batch, seq)`` -> ``(batch, H)``."""
        import torch  # here, not at the top: `poolkit plugins` stays fast

        first = hidden[:, 0].float()
        out = torch.tanh(torch.nn.functional.linear(first, self.weight, self.bias))
        return out.to(hidden.dtype)


@hookimpl
def register_poolers(register):
    register(PretrainedBertPooler())
