"""The attention pooler's heads against a ``mean`` head's, and the default run's heads against
its encoder pass: this checkout and an earlier commit, side by side in one run.

Per side and repeat (interleaved, order alternating), each ``poolkit run`` in a fresh run
directory:

1. the default run from a cold cache of its own: ``settings.json``'s heads seconds over its
   encoder seconds, and the sha256 of its ``results.csv``;
2. ``--poolers attention`` and ``--poolers mean`` on that (now warm) cache: heads seconds,
   and the sha256 of each ``results.csv``.

Then the attention pooler's floor, in this process on this checkout's cache: one training
step's parts on real batches (64 texts drawn from 3,405, as a fold's training split), in
milliseconds (median over 3 epochs): the batch's copy from memory, the pooler module's and
head's forward and backward, the optimizer step; times the steps the attention run took
(its ``results.csv`` epochs x folds x batches per epoch), against a ``mean`` head's time.

    python benchmarks/trainable_heads.py [--ref 82530cf] [--repeats 3]
"""

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from against import ROOT, checkout, run_once  # noqa: E402


def spread(values: list) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main():
    import subprocess

    import pandas as pd
    from common import save

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="82530cf", help="the commit before this change")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        sides = {"this checkout": ROOT, args.ref: checkout(args.ref, tmp / "ref")}
        runs = {side: [] for side in sides}
        try:
            for repeat in range(args.repeats):
                order = list(sides.items()) if repeat % 2 == 0 else list(sides.items())[::-1]
                for side, source in order:
                    cache, tag = tmp / f"cache-{repeat}-{id(source)}", f"{repeat}-{id(source)}"
                    done = {"default": run_once(source, tmp / f"default-{tag}", cache, [])}
                    settings = (tmp / f"default-{tag}" / "settings.json").read_text()
                    done["encode"] = json.loads(settings)["encode_seconds"]
                    for pooler in ("attention", "mean"):
                        done[pooler] = run_once(source, tmp / f"{pooler}-{tag}", cache,
                                                ["--poolers", pooler])
                    done["cache"], done["epochs"] = cache, _epochs(tmp / f"attention-{tag}")
                    runs[side].append(done)
                    print(side, {k: round(v["heads"], 2) if isinstance(v, dict) else v
                                 for k, v in done.items()}, flush=True)
            parts = floor(runs["this checkout"][-1]["cache"])
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(tmp / "ref")], capture_output=True)
    rows = []
    for side, done in runs.items():
        attention = [r["attention"]["heads"] for r in done]
        mean = [r["mean"]["heads"] for r in done]
        heads = [r["default"]["heads"] for r in done]
        encode = [r["encode"] for r in done]
        rows.append({
            "code": side,
            "attention heads s": spread(attention),
            "mean heads s": spread(mean),
            "attention / mean": spread([a / m for a, m in zip(attention, mean)]),
            "default run: heads s": spread(heads),
            "encoder s": spread(encode),
            "heads / encoder": spread([h / e for h, e in zip(heads, encode)]),
            **{f"{name} results.csv": ",".join(sorted({r[name]["sha"]["results.csv"]
                                                       for r in done}))
               for name in ("default", "attention", "mean")},
        })
    steps = runs["this checkout"][-1]["epochs"] * -(-3405 // 64)
    module_s = steps * parts["forward and backward"] / 1e3
    mean_s = statistics.median(r["mean"]["heads"] for r in runs["this checkout"])
    save("trainable-heads", pd.DataFrame(rows), [
        "attention's floor, ms per step (median over 3 epochs of 64-text batches): " + ", ".join(
            f"{name} {ms:.2f}" for name, ms in parts.items()) + f"; its run took {steps:.0f} "
        f"steps, so the module's forward and backward alone take {module_s:.1f} s = "
        f"{module_s / mean_s:.1f}x a mean head's {mean_s:.2f} s",
        f"{args.repeats} repeats per side, interleaved; median (min-max) over them",
        "default run: cold cache of its own, heads and encoder seconds from settings.json; "
        "attention and mean: --poolers alone on that warm cache, heads seconds",
        "results.csv: sha256 (first 12 hex digits) of every repeat's file, which must agree "
        "within a side and, where the code changed nothing in them, across sides",
    ])


def _epochs(out: Path) -> float:
    """Epochs the run's heads took, summed over its folds (results.csv: the folds' mean)."""
    import pandas as pd

    settings = json.loads((out / "settings.json").read_text())
    return float(pd.read_csv(out / "results.csv")["epochs"].iloc[0]) * settings["folds"]


def floor(cache_dir: Path) -> dict:
    """Milliseconds per training step of the attention pooler, by part, on this checkout."""
    import time

    import numpy as np
    import torch
    import torch.nn.functional as F

    from poolkit.data.readers import load_default_examples
    from poolkit.encoding.encode import encode_to_cache
    from poolkit.encoding.model import load_encoder
    from poolkit.heads.base import AdamW
    from poolkit.heads.trainable import token_standardization
    from poolkit.pipeline.stages import resolve_poolers

    texts, labels = load_default_examples()[:2]
    cache, _ = encode_to_cache(load_encoder(None), list(texts), cache_dir)
    rng = np.random.default_rng(0)
    train = np.sort(rng.permutation(len(texts))[:3405])
    layer = max(cache.layers)
    block = cache.in_memory(layer, token_standardization(cache, train, layer, {}))
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({
        "pooler": resolve_poolers(["attention"]).selected["attention"].module(cache.hidden_size),
        "head": torch.nn.Linear(cache.hidden_size, 2)})
    optimizer = AdamW(list(model.parameters()), 1e-3, 0.01)
    y = torch.as_tensor(np.asarray(labels) == np.unique(labels)[1]).long()
    times = {"batch copy": [], "forward and backward": [], "optimizer step": []}
    for _ in range(3):
        for start in range(0, len(train), 64):
            rows = train[rng.permutation(len(train))[:64]]
            began = time.perf_counter()
            hidden, mask = block.gather(rows, reuse=True)  # as training reads its batches
            copied = time.perf_counter()
            loss = F.cross_entropy(model["head"](model["pooler"](hidden, mask)),
                                   y[torch.from_numpy(rows)])
            model.zero_grad()
            loss.backward()
            stepped = time.perf_counter()
            optimizer.step()
            done = time.perf_counter()
            for name, seconds in zip(times, (copied - began, stepped - copied, done - stepped)):
                times[name].append(seconds * 1e3)
    return {name: statistics.median(ms) for name, ms in times.items()}


if __name__ == "__main__":
    main()
