"""Running the encoder once: the model and its recipe, tokenizing, batches, the hidden-state
cache, and torchrun's collectives."""
