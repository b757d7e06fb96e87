"""Fine-tuning step throughput: poolkit's training step versus a plain Hugging Face loop.

Both fine-tune the same model (the embedded MiniLM BERT, or --model) on the
same texts (the default dataset's first N), on the same device and threads,
one optimizer step per batch of --batch texts. Throughput counts real
(non-padding) tokens per second of forward + backward + optimizer step.

- poolkit: :func:`poolkit.heads.finetune.train_step` on a :func:`build_model` with the
  ``bert_pooler`` plugin (so the same computation as the reference), its
  length-bucketed batches (:func:`train_batches`), AdamW, schedule, clipping.
- Hugging Face: ``BertForSequenceClassification`` with ``torch.optim.AdamW``,
  ``get_linear_schedule_with_warmup`` and ``clip_grad_norm_``, batches padded to
  their longest text as ``DataCollatorWithPadding`` does, in two orders: the
  very batches poolkit trains on (like for like: the step's own overhead), and
  shuffled batches (what ``Trainer`` does by default, ``group_by_length=False``).

Fraction of peak: a training step is about 3x the forward FLOPs of the real
tokens (:func:`common.encoder_flops`), over a large matmul's FLOP/s measured in
the same run (fp32 on CPU, bf16 on CUDA, where both run under bf16 autocast).

    python benchmarks/finetune.py [--texts N] [--batch B] [--repeats R] [--device cpu|cuda]
"""

import argparse
import time

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=256, help="first N texts per repeat")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--model", default=None, help="default: the embedded MiniLM")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--name", default=None, help="results file name (default: finetune-<device>)")
    args = parser.parse_args()

    import pandas as pd
    import torch
    import torch.nn.functional as F
    from common import encoder_flops, matmul_flops, save
    from transformers import BertForSequenceClassification, get_linear_schedule_with_warmup
    from transformers.utils import logging as hf_logging

    from poolkit.data.readers import load_default_examples
    from poolkit.encoding.encode import pick_device
    from poolkit.encoding.model import load_encoder
    from poolkit.encoding.tokenization import tokenize
    from poolkit.heads.base import FineTuneConfig
    from poolkit.heads.finetune import (
        build_model,
        lr_factor,
        optimizer_for,
        train_batches,
        train_step,
    )
    from poolkit.pooling.features import FeatureSet
    from poolkit.pooling.manager import collect_poolers, get_plugin_manager

    hf_logging.set_verbosity_error()  # "classifier.weight MISSING": new, as intended
    device = pick_device(args.device)
    on_cuda = device.startswith("cuda")
    texts, raw = load_default_examples()
    texts = texts[: args.texts]
    names = sorted(set(map(str, raw)))
    labels = np.array([names.index(str(v)) for v in raw[: args.texts]], dtype=np.int64)
    encoder = load_encoder(args.model, max_length=args.max_length)
    ids = tokenize(encoder, texts)[0]
    lengths = np.array([len(x) for x in ids])
    tokens = int(lengths.sum())
    train_flops = 3 * encoder_flops(encoder.config, lengths)
    pad_id = encoder.tokenizer.pad_token_id or 0
    pooler = collect_poolers(get_plugin_manager())["bert_pooler"][0]
    pooler.setup(encoder)
    feature_set = FeatureSet("bert_pooler", pooler, (encoder.num_layers,), False,
                             encoder.hidden_size, finetuned=True)
    settings = FineTuneConfig(batch_size=args.batch)
    bucketed = train_batches(lengths, args.batch, np.random.default_rng(0))
    shuffled = [part for part in np.array_split(np.random.default_rng(0).permutation(len(ids)),
                                                 -(-len(ids) // args.batch))]
    steps = len(bucketed)
    precision = "bf16" if on_cuda else "fp32"

    def sync():
        if on_cuda:
            torch.cuda.synchronize()

    def run_poolkit():
        model = build_model(encoder, feature_set, len(names), 0, device).train()
        optimizer = optimizer_for(model, 2e-5, 1e-3, 0.01)
        sync()
        began = time.perf_counter()
        for step, batch in enumerate(bucketed):
            train_step(model, optimizer, ids, batch, labels, pad_id, device, settings,
                       lr_factor(step, int(0.1 * steps), steps), precision)
        sync()
        return time.perf_counter() - began

    def run_hf(batches):
        model = BertForSequenceClassification.from_pretrained(
            encoder.path, num_labels=len(names), attn_implementation="sdpa",
            dtype=torch.float32).to(device).train()
        optimizer = torch.optim.AdamW([
            {"params": [p for n, p in model.named_parameters() if "bias" not in n
                        and "LayerNorm" not in n], "weight_decay": 0.01},
            {"params": [p for n, p in model.named_parameters() if "bias" in n
                        or "LayerNorm" in n], "weight_decay": 0.0}], lr=2e-5)
        schedule = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
        sync()
        began = time.perf_counter()
        for batch in batches:
            encoded = encoder.tokenizer([texts[i] for i in batch], padding=True, truncation=True,
                                        max_length=args.max_length, return_tensors="pt")
            encoded = {k: v.to(device) for k, v in encoded.items()}
            target = torch.from_numpy(labels[batch]).to(device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda):
                logits = model(**encoded).logits
            loss = F.cross_entropy(logits.float(), target)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - began

    runs = {"poolkit (bucketed batches)": run_poolkit,
            "HF loop, the same batches": lambda: run_hf(bucketed),
            "HF loop, shuffled batches (Trainer's default)": lambda: run_hf(shuffled)}
    padded = {"poolkit (bucketed batches)": sum(len(b) * lengths[b].max() for b in bucketed),
              "HF loop, the same batches": sum(len(b) * lengths[b].max() for b in bucketed),
              "HF loop, shuffled batches (Trainer's default)":
                  sum(len(b) * lengths[b].max() for b in shuffled)}
    for run in runs.values():  # warm-up: first-call allocations, lazy imports
        run()
    seconds = {name: [] for name in runs}
    peaks = []
    peak_dtype = torch.bfloat16 if on_cuda else torch.float32
    for _ in range(args.repeats):  # interleaved, so drifts hit every side alike
        for name, run in runs.items():
            seconds[name].append(run())
        peaks.append(matmul_flops(peak_dtype, device, n=8192 if on_cuda else 2048))
    peak = max(peaks)
    best = {name: min(values) for name, values in seconds.items()}
    base = best["HF loop, the same batches"]
    rows = [{"loop": name, "best s": round(best[name], 3),
             "real tokens/s": round(tokens / best[name]),
             "padded share": f"{1 - tokens / padded[name]:.1%}",
             "vs HF same batches": round(base / best[name], 3),
             "fraction of peak": f"{train_flops / best[name] / peak:.1%}"} for name in runs]
    table = pd.DataFrame(rows)
    save(args.name or f"finetune-{'cuda' if on_cuda else 'cpu'}", table, [
        f"{len(texts)} texts ({tokens} real tokens, max length {args.max_length}) of the default "
        f"dataset, {steps} optimizer steps of {args.batch} texts, model {encoder.name} "
        f"({encoder.num_layers} layers, hidden {encoder.hidden_size}), device {device}, "
        f"{'bf16 autocast' if on_cuda else 'fp32'}; best of {args.repeats} interleaved repeats.",
        "Each step: forward, cross-entropy, backward, gradient clipping, AdamW, schedule. "
        "poolkit's includes building its batches; the HF loop's includes tokenizing them.",
        f"Peak: {peak / 1e9:.0f} GFLOP/s ({'bf16' if on_cuda else 'fp32'} matmul, best of "
        f"{len(peaks)}); fraction of peak = 3 x forward FLOPs of the real tokens / time / peak.",
        "Per-repeat seconds: " + "; ".join(f"{name}: {', '.join(f'{s:.2f}' for s in values)}"
                                          for name, values in seconds.items()),
    ])


if __name__ == "__main__":
    main()
