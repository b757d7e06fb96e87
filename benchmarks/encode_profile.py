"""Where the encoder pass's time goes, against the matmul peak measured in the same run.

``encode_to_cache`` of the default model over the first ``--texts`` default texts (a fresh
cache, tokenizing and writing included), under ``torch.profiler``: each operator's own
time and share, the time outside any operator (tokenizing, cache writes, Python), the
whole pass's matmul FLOP/s as a fraction of a large fp32 matmul's, and the linear layers'
own rate (their FLOPs over ``aten::addmm``'s time). With ``--compile``, the same pass with
the model under ``torch.compile(dynamic=True)``: its first pass (compiling) and a second
one, beside an eager pass, unprofiled.

    python benchmarks/encode_profile.py [--texts 1200] [--compile]
"""

import argparse
import tempfile
import time


def timed(encoder, texts) -> float:
    from poolkit.encoding.encode import encode_to_cache

    with tempfile.TemporaryDirectory() as cache:
        began = time.perf_counter()
        encode_to_cache(encoder, texts, cache, device="cpu")
        return time.perf_counter() - began


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=1200)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()

    import numpy as np
    import pandas as pd
    import torch
    from common import encoder_flops, matmul_flops, save
    from torch.profiler import ProfilerActivity, profile

    from poolkit.data.readers import load_default_examples
    from poolkit.encoding.model import load_encoder
    from poolkit.encoding.tokenization import tokenize

    texts = load_default_examples()[0][: args.texts]
    encoder = load_encoder(None, max_length=256)
    lengths = np.array([len(x) for x in tokenize(encoder, texts)[0]])
    config = encoder.model.config
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    linear = float(layers * (8 * h * h + 4 * h * i) * lengths.sum())
    timed(encoder, texts[:100])  # warm-up
    peak = matmul_flops(torch.float32, "cpu", n=2048)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wall = timed(encoder, texts)
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    in_ops = sum(e.self_cpu_time_total for e in ops) / 1e6
    rows = [{"where": e.key, "s": round(e.self_cpu_time_total / 1e6, 3),
             "share of the pass": round(e.self_cpu_time_total / 1e6 / wall, 3)}
            for e in ops[:8]]
    rows.append({"where": "outside any operator (tokenizing, cache writes, Python)",
                 "s": round(wall - in_ops, 3), "share of the pass": round(1 - in_ops / wall, 3)})
    addmm = next(e.self_cpu_time_total for e in ops if e.key == "aten::addmm") / 1e6
    flops = encoder_flops(config, lengths)
    notes = [
        f"{len(texts)} texts, {int(lengths.sum())} real tokens; the pass {wall:.2f} s under "
        "the profiler",
        f"matmul peak (float32, 2048^3): {peak / 1e9:.1f} GFLOP/s; the pass's matmul FLOPs "
        f"{flops / 1e12:.3f} TFLOP: {flops / wall / 1e9:.1f} GFLOP/s = "
        f"{flops / wall / peak:.3f} of the peak",
        f"linear layers alone: {linear / 1e12:.3f} TFLOP of real tokens in {addmm:.2f} s of "
        f"aten::addmm = {linear / addmm / 1e9:.1f} GFLOP/s = {linear / addmm / peak:.3f} of "
        "the peak (padding included in their work, not in the count)",
    ]
    if args.compile:
        eager = min(timed(encoder, texts) for _ in range(2))
        encoder._model = torch.compile(encoder.model, dynamic=True)  # the benchmark only
        first = timed(encoder, texts)
        second = timed(encoder, texts)
        notes.append(f"torch.compile(dynamic=True): first pass (compiling) {first:.1f} s, "
                     f"second {second:.2f} s, eager {eager:.2f} s (best of 2): "
                     f"{eager / second:.2f}x once compiled; {flops / second / peak:.3f} of "
                     "the peak")
    save("encode-profile-cpu", pd.DataFrame(rows), notes)


if __name__ == "__main__":
    main()
