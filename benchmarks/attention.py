"""SDPA against eager attention on the default model: how far their states differ, per
layer, and how long each takes to encode the default data, side by side in one run.

Each side is the embedded MiniLM loaded by poolkit with ``--attn-implementation sdpa``
or ``eager``. Once, each encodes the texts into an fp32 token cache of every layer
(0 = embeddings .. 6): the state difference is the largest absolute difference between
the two per layer, over every real token, and the same relative to that layer's
largest absolute state. Then each encodes them into a fresh default cache (the last
layer, fp16), ``--repeats`` times, interleaved: the encode time.

    python benchmarks/attention.py [--texts N] [--repeats R] [--device cpu|cuda]
"""

import argparse
import statistics
import tempfile
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=None, help="first N texts (default: all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    import numpy as np
    import pandas as pd
    from common import save

    from poolkit.data.readers import load_default_examples
    from poolkit.encoding.encode import encode_to_cache, pick_device
    from poolkit.encoding.model import load_encoder

    device = pick_device(args.device)
    texts = load_default_examples()[0][: args.texts]
    sides = {name: load_encoder(None, attn_implementation=name) for name in ("sdpa", "eager")}
    layers = list(range(sides["sdpa"].num_layers + 1))
    seconds = {name: [] for name in sides}
    states = {}
    with tempfile.TemporaryDirectory() as root:
        for name, encoder in sides.items():  # every layer, compared (and a warm-up)
            states[name] = encode_to_cache(encoder, texts, f"{root}/{name}-all", device=device,
                                           dtype="fp32", layers=layers)[0]
        for repeat in range(args.repeats):  # timed: the last layer, as a default run
            for name, encoder in (sides.items() if repeat % 2 == 0 else
                                  reversed(list(sides.items()))):
                began = time.perf_counter()
                encode_to_cache(encoder, texts, f"{root}/{name}-{repeat}", device=device)
                seconds[name].append(time.perf_counter() - began)
        rows = []
        for layer in layers:
            a = np.asarray(states["sdpa"].states(layer), dtype=np.float64)
            b = np.asarray(states["eager"].states(layer), dtype=np.float64)
            gap = float(np.abs(a - b).max())
            rows.append({"layer": layer, "max |sdpa - eager|": f"{gap:.2e}",
                         "relative to max |state|": f"{gap / float(np.abs(a).max()):.2e}"})
    attention = {name: encoder.attention for name, encoder in sides.items()}
    table = pd.DataFrame(rows)
    best = {name: min(found) for name, found in seconds.items()}
    notes = [
        f"{len(texts)} texts, {int(states['sdpa'].lengths.sum())} tokens, device {device}; "
        f"loaded as {attention}.",
        "Encode seconds, every repeat (a fresh default cache each time, tokenizing and "
        "writing included): " + "; ".join(f"{name} {' '.join(f'{s:.1f}' for s in found)}"
                                  for name, found in seconds.items()) + ".",
        f"Best: sdpa {best['sdpa']:.1f} s, eager {best['eager']:.1f} s: eager / sdpa = "
        f"{best['eager'] / best['sdpa']:.2f}x (medians "
        f"{statistics.median(seconds['eager']) / statistics.median(seconds['sdpa']):.2f}x).",
        "The fp16 cache (the default) rounds states by about 2**-11 of their size "
        "(4.9e-04 relative).",
    ]
    save(f"attention-{device.split(':')[0]}", table, notes)


if __name__ == "__main__":
    main()
