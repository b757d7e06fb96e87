"""Encoding throughput: poolkit versus sentence-transformers, and versus the hardware.

Both encode the same texts (the default dataset) with the same model (the
embedded MiniLM BERT), max length, device and threads. Throughput counts real
(non-padding) tokens per second. poolkit's time includes tokenizing and writing
the token-state cache; sentence-transformers' includes tokenizing and its mean
pooling. Achieved FLOP/s counts the encoder's matmuls from the model's shape
and the real token lengths, over a large fp32 (CPU) or bf16 (GPU) matmul's
FLOP/s measured in the same run. With ``--compile``, a third side: poolkit with
``--compile`` (the encoder under ``torch.compile``; its compile happens in the warm-up,
timed on its own), and how far its states are from eager ones (every real token's
last-layer state, fp32 caches of both).

    python benchmarks/encode.py [--texts N] [--repeats R] [--device cpu|cuda] [--compile]
"""

import argparse
import tempfile
import time

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=None, help="first N texts (default: all)")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--device", default=None)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--compile", action="store_true", help="add poolkit --compile")
    args = parser.parse_args()

    import pandas as pd
    import torch
    from common import encoder_flops, matmul_flops, save
    from sentence_transformers import SentenceTransformer

    from poolkit.data.readers import load_default_examples
    from poolkit.encoding.encode import encode_to_cache, pick_device
    from poolkit.encoding.model import default_model_path, load_encoder
    from poolkit.encoding.tokenization import tokenize

    device = pick_device(args.device)
    texts = load_default_examples()[0][: args.texts]
    encoder = load_encoder(None, max_length=args.max_length)
    lengths = np.array([len(x) for x in tokenize(encoder, texts)[0]])
    tokens = int(lengths.sum())
    flops = encoder_flops(encoder.config, lengths)

    st = SentenceTransformer(str(default_model_path()), device=device)
    st.max_seq_length = args.max_length

    def run_poolkit(which=encoder):
        with tempfile.TemporaryDirectory() as cache:
            encode_to_cache(which, texts, cache, device=device)

    def run_st():
        st.encode(texts, batch_size=32, convert_to_numpy=True)

    run_poolkit(), run_st()  # warm-up: first-call allocations, lazy imports
    sides = [("poolkit", run_poolkit), ("sentence-transformers", run_st)]
    notes = []
    if args.compile:
        compiled = load_encoder(None, max_length=args.max_length, compile=True)
        began = time.perf_counter()
        run_poolkit(compiled)  # its warm-up: compiles
        warm_up = time.perf_counter() - began
        sides.append(("poolkit --compile", lambda: run_poolkit(compiled)))
        notes.append(f"poolkit --compile: its first pass (compiling included) {warm_up:.1f} s; "
                     f"states against eager: {_state_gap(encoder, compiled, texts, device)}")
    peak_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    matmul_n = 8192 if device.startswith("cuda") else 2048
    seconds = {name: [] for name, _ in sides}
    peaks = []
    for repeat in range(args.repeats):  # interleaved, order alternating: drift hits both alike
        # The peak is measured in every repeat and the best kept: one slow
        # moment on a shared machine must not deflate it.
        peaks.append(matmul_flops(peak_dtype, device, n=matmul_n))
        for name, fn in sides if repeat % 2 == 0 else sides[::-1]:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            began = time.perf_counter()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds[name].append(time.perf_counter() - began)

    peak = max(peaks)
    rows = []
    for name, times in seconds.items():
        best = min(times)
        rows.append({
            "encoder": name, "best s": round(best, 2), "median s": round(float(np.median(times)), 2),
            "real tokens/s": round(tokens / best), "GFLOP/s": round(flops / best / 1e9, 1),
            "fraction of matmul peak": round(flops / best / peak, 3),
        })
    table = pd.DataFrame(rows)
    speedup = rows[1]["best s"] / rows[0]["best s"]
    if args.compile:
        within = sorted(e / c for e, c in zip(seconds["poolkit"], seconds["poolkit --compile"]))
        notes.append(f"poolkit eager / --compile, per interleaved repeat: median "
                     f"{np.median(within):.2f}x, range {within[0]:.2f}-{within[-1]:.2f}x")
    # Each repeat times both sides back to back: their ratio is the least
    # exposed to drift on a shared machine.
    paired = sorted(st / pk for pk, st in zip(seconds["poolkit"], seconds["sentence-transformers"]))
    save(f"encode-{device.split(':')[0]}", table, [
        f"{len(texts)} texts, {tokens} real tokens, max length {args.max_length}, device {device}",
        f"poolkit / sentence-transformers real tokens/s: {speedup:.2f}x (best vs best); "
        f"per interleaved repeat: median {np.median(paired):.2f}x, range "
        f"{paired[0]:.2f}-{paired[-1]:.2f}x",
        f"matmul peak ({str(peak_dtype).replace('torch.', '')}): {peak / 1e9:.1f} GFLOP/s; "
        f"encoder work {flops / 1e12:.2f} TFLOP",
        f"best of {args.repeats} interleaved repeats (order alternating) after one warm-up each; "
        "matmul peak: best of one measurement per repeat",
        *notes,
    ])


def _state_gap(eager, compiled, texts, device) -> str:
    """Largest difference between two encoders' last-layer states of ``texts`` (fp32 caches),
    absolute and relative to the largest state."""
    from poolkit.encoding.encode import encode_to_cache

    states = []
    with tempfile.TemporaryDirectory() as folder:
        for i, which in enumerate((eager, compiled)):
            cache, _ = encode_to_cache(which, texts, f"{folder}/{i}", device=device,
                                       dtype="fp32")
            states.append(np.asarray(cache.states(None), dtype=np.float64))
    gap = float(np.abs(states[0] - states[1]).max())
    return (f"largest difference {gap:.2e}, {gap / np.abs(states[0]).max():.2e} of the largest "
            "state (the fp16 cache rounds by 2**-11 = 4.9e-04 of a state)")


if __name__ == "__main__":
    main()
