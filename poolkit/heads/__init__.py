"""The heads trained on pooled features: what every kind shares (``base``), linear heads,
trainable poolers, the published probes (and their solver), and fine-tuning."""
