"""Scaling: wall time, peak memory and cache size against texts and poolers.

1. Texts (default 1k, 4k, 16k; the default dataset's texts, repeated with a
   numbered suffix past its 4,866): a cold ``poolkit run`` (4 built-ins × 3
   seeds), then a warm one; peak RSS of an encode-only process (the encoder
   pass and its streamed cache writes) and of the whole cold run; cache size
   on disk against 2 bytes × real tokens × hidden size.
2. Poolers (4, 8, 16 fixed poolers, the built-ins plus extra plugin-dir
   poolers): warm-cache ``poolkit run`` wall time on the default data.

Each figure comes from its own process (``os.wait4`` gives that process's
peak RSS).

    python benchmarks/scaling.py [--texts 1000,4000,16000] [--poolers 4,8,16]

``--texts ""`` skips part 1 (and leaves its saved table alone).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXTRA_POOLERS = '''
"""Extra fixed poolers for the scaling benchmark: masked means and maxes of
the last k real tokens, k = 1..6, real work of the same kind as the built-ins."""
import torch
from poolkit import Pooler, hookimpl


class LastK(Pooler):
    def __init__(self, k, how):
        self.k, self.how, self.name = k, how, f"last{k}_{how}"

    def pool(self, hidden, mask):
        lengths = mask.sum(dim=1, keepdim=True)
        pos = torch.arange(mask.shape[1]).unsqueeze(0)
        keep = (mask.bool() & (pos >= lengths - self.k)).unsqueeze(-1)
        if self.how == "max":
            return hidden.masked_fill(~keep, torch.finfo(hidden.dtype).min).amax(dim=1)
        return (hidden * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)


@hookimpl
def register_poolers(register):
    for k in range(1, 7):
        for how in ("mean", "max"):
            register(LastK(k, how))
'''

ENCODE_ONLY = """
import sys
from poolkit.data import read_examples
from poolkit.encoding import encode_to_cache
from poolkit.model import load_encoder
texts, _ = read_examples(sys.argv[1], "text", "label")
encode_to_cache(load_encoder(None), texts, sys.argv[2])
"""


def measure(cmd, env):
    """(wall seconds, peak RSS MiB) of one child process."""
    began = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - began
    if status != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed: {proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", default="1000,4000,16000")
    parser.add_argument("--poolers", default="4,8,16")
    parser.add_argument("--repeats", type=int, default=3,
                        help="warm runs per point (best taken; pooler counts interleaved)")
    args = parser.parse_args()

    import numpy as np
    import pandas as pd

    from common import save
    from poolkit.data import load_default_examples

    base_texts, base_labels = load_default_examples()
    poolkit = [sys.executable, "-m", "poolkit", "run", "--seeds", "3"]
    builtins = ["cls", "bert_pooler", "mean", "max"]
    four = ["--poolers", ",".join(builtins)]
    text_rows, pooler_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for n in [int(x) for x in args.texts.split(",") if x]:
            texts = [t if i < len(base_texts) else f"{t} ({i // len(base_texts)})"
                     for i, t in ((i, base_texts[i % len(base_texts)]) for i in range(n))]
            labels = [base_labels[i % len(base_labels)] for i in range(n)]
            data = tmp / f"data-{n}.csv"
            pd.DataFrame({"text": texts, "label": labels}).to_csv(data, index=False)
            env = {**os.environ, "POOLKIT_CACHE_DIR": str(tmp / f"cache-{n}"), "CI": "1"}
            enc_wall, enc_rss = measure([sys.executable, "-c", ENCODE_ONLY, str(data),
                                         str(tmp / f"cache-enc-{n}")], env)
            cold, cold_rss = measure([*poolkit, *four, "--data", data, "--out", tmp / f"run-{n}"],
                                     env)
            warm = min(measure([*poolkit, *four, "--data", data, "--out",
                                tmp / f"run-{n}-warm{r}"], env)[0] for r in range(args.repeats))
            entry = next(p for p in (tmp / f"cache-{n}").iterdir() if p.is_dir())
            meta = json.loads((entry / "meta.json").read_text())
            ideal = 2 * meta["total_tokens"] * meta["hidden_size"]
            text_rows.append({
                "texts": n, "real tokens": meta["total_tokens"], "cold run s": round(cold, 1),
                "warm run s": round(warm, 1), "warm / cold": round(warm / cold, 3),
                "encode-only peak RSS MiB": round(enc_rss), "cold run peak RSS MiB": round(cold_rss),
                "cache MiB": round(dir_bytes(entry) / 2**20, 1),
                "cache / (2 B x tokens x hidden)": round(dir_bytes(entry) / ideal, 3),
            })

        plugins = tmp / "plugins"
        plugins.mkdir()
        (plugins / "last_k.py").write_text(EXTRA_POOLERS)
        extra = [f"last{k}_{how}" for k in range(1, 7) for how in ("mean", "max")]
        env = {**os.environ, "POOLKIT_CACHE_DIR": str(tmp / "cache-poolers"), "CI": "1"}
        measure([*poolkit, *four, "--out", tmp / "prime"], env)
        counts = [int(x) for x in args.poolers.split(",")]
        walls, rsss = {c: [] for c in counts}, {c: [] for c in counts}
        phases = {c: [] for c in counts}  # (pooling s, heads s) from each run's settings.json
        for r in range(args.repeats):  # interleaved, so drift hits every count alike
            for count in counts:
                names = (builtins + extra)[:count]
                out = tmp / f"poolers-{count}-{r}"
                wall, rss = measure([*poolkit, "--plugins-dir", plugins, "--poolers",
                                     ",".join(names), "--out", out], env)
                walls[count].append(wall)
                rsss[count].append(rss)
                settings = json.loads((out / "settings.json").read_text())
                phases[count].append((settings["pool_seconds"], settings["train_seconds"]))
        first = counts[0]
        medians = {c: np.median(np.array(phases[c]), axis=0) for c in counts}  # (pooling, heads)
        for count in counts:
            best, base = min(walls[count]), min(walls[first])
            # Within a repeat the counts ran back to back, so their ratio drifts
            # least on a shared machine: its median is the steadier figure.
            ratios = [w / b for w, b in zip(walls[count], walls[first])]
            extra = (best - base) / (count - first) if count != first else float("nan")
            pooler_rows.append({
                "fixed poolers": count, "heads": 3 * count, "warm run s": round(best, 2),
                "peak RSS MiB": round(max(rsss[count])), "vs first (best)": round(best / base, 3),
                "vs first (median per repeat)": round(float(np.median(ratios)), 3),
                "per extra pooler s": round(extra, 3),
                "pooling s (median)": round(float(medians[count][0]), 2),
                "heads s (median)": round(float(medians[count][1]), 2),
            })

    save("scaling-poolers", pd.DataFrame(pooler_rows), [
        "warm cache, default data, 3 seeds per pooler, whole `poolkit run` command timed; "
        f"best of {args.repeats} interleaved repeats; per extra pooler = best-of difference "
        "over the extra poolers",
        "per-repeat warm run s: " + "; ".join(
            f"{count}: " + ", ".join(f"{w:.2f}" for w in walls[count]) for count in counts),
        "pooling = the fixed poolers' pass over the cache; heads = training every head and "
        "scoring it (scikit-learn metrics); both from each run's settings.json",
        *_phase_costs(medians, min(walls[counts[0]])),
    ])
    if not text_rows:
        return
    texts_table = pd.DataFrame(text_rows)
    small, large = text_rows[0], text_rows[-1]
    save("scaling-texts", texts_table, [
        "each run a separate `poolkit run` process (4 built-ins x 3 seeds), warm: best of "
        f"{args.repeats}; encode-only = "
        "tokenize + encoder pass + streamed cache writes, nothing else",
        f"{small['texts']} -> {large['texts']} texts: cache grows "
        f"{large['cache MiB'] - small['cache MiB']:.0f} MiB, encode-only peak RSS grows "
        f"{large['encode-only peak RSS MiB'] - small['encode-only peak RSS MiB']:.0f} MiB",
    ])


def _phase_costs(medians, first_wall):
    """A note line: what each extra pooler costs per phase (``medians[count]``:
    median pooling and heads seconds), and what adding at most 15% to the first
    count's wall allows."""
    first, last = min(medians), max(medians)
    if first == last:
        return []
    pooling_ms, heads_ms = 1000 * (medians[last] - medians[first]) / (last - first)
    return [f"per extra pooler ({first} -> {last} poolers, medians): pooling {pooling_ms:.0f} ms, "
            f"heads {heads_ms:.0f} ms; adding at most 15% to the {first}-pooler run "
            f"({first_wall:.2f} s) allows {1000 * 0.15 * first_wall / (last - first):.0f} ms "
            "per extra pooler"]


if __name__ == "__main__":
    main()
