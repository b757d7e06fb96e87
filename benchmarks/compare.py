"""End to end: ``poolkit run`` versus the naive way, one frozen-BERT classifier per pooler.

poolkit: ``poolkit run`` with the 4 built-in poolers × 3 seeds on the default
data and model, cold cache, timed as a whole command (imports included).

Naive: what users do today without poolkit, like ``BertForSequenceClassification``
with the encoder frozen: for each pooler and seed, a model whose every training
step tokenizes a shuffled batch of 32, runs the encoder, pools and updates the
head; every epoch ends with a validation pass through the encoder, and the
test set is encoded once at the end. Running that in full takes hours, so its
per-text cost is timed on a subset (``--subset`` texts, each pooler) and
scaled to the full train/validation/test sizes and to the same number of
epochs poolkit's heads trained (read from poolkit's results.csv). The table
says which figure is measured and which is scaled.

    python benchmarks/compare.py [--subset 256]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def naive_seconds_per_text(encoder, pooler, texts, labels, num_labels, batch_size=32):
    """(train step, eval) seconds per text for a frozen encoder + pooler + linear head."""
    import torch

    model = encoder.model
    head = torch.nn.Linear(encoder.hidden_size, num_labels)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)

    def forward(batch):
        enc = encoder.tokenizer(batch, padding=True, truncation=True,
                                max_length=encoder.max_length, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state
        return head(pooler.pool(hidden, enc["attention_mask"]))

    order = np.random.default_rng(0).permutation(len(texts))
    began = time.perf_counter()
    for start in range(0, len(texts), batch_size):
        rows = order[start : start + batch_size]
        logits = forward([texts[i] for i in rows])
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor(labels[rows]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    train = (time.perf_counter() - began) / len(texts)
    began = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            forward(texts[start : start + batch_size])
    return train, (time.perf_counter() - began) / len(texts)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subset", type=int, default=256, help="texts timed per pooler (naive)")
    args = parser.parse_args()

    import pandas as pd
    from common import save

    from poolkit.data.dataset import load_dataset
    from poolkit.encoding.model import load_encoder
    from poolkit.pipeline.stages import resolve_poolers

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "POOLKIT_CACHE_DIR": f"{tmp}/cache", "CI": "1"}
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "poolkit", "run", "--seeds", "3", "--poolers",
                        "cls,bert_pooler,mean,max", "--out", f"{tmp}/run"],
                       env=env, check=True, capture_output=True)
        poolkit_seconds = time.perf_counter() - began
        results = pd.read_csv(f"{tmp}/run/results.csv")
        settings = json.loads(Path(f"{tmp}/run/settings.json").read_text())

    dataset = load_dataset()
    sizes = {k: len(v) for k, v in dataset.splits.items()}
    encoder = load_encoder(None)
    poolers = resolve_poolers(["cls", "bert_pooler", "mean", "max"]).selected
    subset = dataset.splits["train"][: args.subset]
    texts = [dataset.texts[i] for i in subset]
    labels = dataset.labels[subset]
    naive_total = 0.0
    per_pooler = []
    for name, pooler in poolers.items():
        pooler.setup(encoder)
        train_s, eval_s = naive_seconds_per_text(encoder, pooler, texts, labels, dataset.num_labels)
        epochs = [int(e) for e in results.loc[results["pooler"] == name, "epochs"]]
        total = sum(e * (sizes["train"] * train_s + sizes["validation"] * eval_s)
                    + sizes["test"] * eval_s for e in epochs)
        naive_total += total
        per_pooler.append(f"{name}: {train_s * 1e3:.1f} ms/text per training step, "
                          f"{eval_s * 1e3:.1f} ms/text per eval pass (measured on {len(texts)} "
                          f"texts), epochs per seed {list(epochs)} -> {total:.0f} s (scaled)")

    table = pd.DataFrame([
        {"method": "poolkit run (4 poolers x 3 seeds, cold cache)", "wall s": round(poolkit_seconds, 1),
         "how": "measured"},
        {"method": "naive frozen-BERT classifier per pooler x seed", "wall s": round(naive_total, 1),
         "how": f"per-text cost measured on {len(texts)} texts, scaled"},
    ])
    save("compare", table, [
        f"speed-up: {naive_total / poolkit_seconds:.0f}x",
        f"splits {sizes}; poolkit encoder {settings['encode_seconds']} s, heads "
        f"{settings['train_seconds']} s",
        *per_pooler,
        "the naive way uses batches of 32 in shuffled order (padding to the batch's longest text)",
    ])


if __name__ == "__main__":
    main()
