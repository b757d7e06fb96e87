"""Scaling: wall time, peak memory and cache size against texts, poolers and cache modes.

1. Texts (default 1k, 4k, 16k; the default dataset's texts, repeated with a
   numbered suffix past its 4,866): a cold ``poolkit run`` (4 built-ins × 3
   seeds), then a warm one; peak RSS of an encode-only process (the encoder
   pass and its streamed cache writes) and of the whole cold run; cache size
   on disk against 2 bytes × real tokens × hidden size.
2. Poolers (4, 8, 16 fixed poolers, the built-ins plus extra plugin-dir
   poolers): warm-cache ``poolkit run`` wall time on the default data.

3. Cache modes (default 10k and 100k texts, made the same way): the encode
   and pool stages of a run of the 4 built-ins (``pipeline.encode`` and
   ``pipeline.pool``, what ``--cache-mode`` changes) with ``--cache-mode
   tokens`` and ``pooled``, each a cold process of its own: the entry's size
   against ``2 x tokens x hidden x layers`` and ``4 x N x sum(D)``, peak RSS,
   tokens/s; then a projection, on paper, for 1M and 100M documents with a
   12-layer 768-wide encoder (scaling-projection.md).

Each figure comes from its own process (``os.wait4`` gives that process's
peak RSS).

    python benchmarks/scaling.py [--texts 1000,4000,16000] [--poolers 4,8,16]
                                 [--modes 10000,100000]

``--texts ""``, ``--poolers ""`` or ``--modes ""`` skips that part (and leaves
its saved table alone).
"""

import argparse
import json
import os
import shutil
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
from poolkit.data.readers import read_examples
from poolkit.encoding.encode import encode_to_cache
from poolkit.encoding.model import load_encoder
texts, _ = read_examples(sys.argv[1], "text", "label")
encode_to_cache(load_encoder(None), texts, sys.argv[2])
"""


STAGES = """
import json
import sys
from poolkit import pipeline
from poolkit.config import RunConfig
data, cache, mode = sys.argv[1:4]
config = RunConfig(data=data, cache_dir=cache, cache_mode=mode, seeds=1,
                   poolers=("cls", "bert_pooler", "mean", "max"))
poolers = pipeline.resolve_poolers(config.poolers)
dataset = pipeline.load_data(config.group("data"), config.planned)
encoded = pipeline.encode(config, poolers.selected, dataset.texts)
features = pipeline.pool(encoded)
print(json.dumps({"entry": str(encoded.cache.path), "tokens": int(encoded.cache.lengths.sum()),
                  "encode_s": encoded.seconds, "pool_s": features.seconds,
                  "hidden": encoded.encoder.hidden_size,
                  "dims": [a.shape[1] for a in features.arrays.values()],
                  "features_bytes": sum(a.nbytes for a in features.arrays.values())}))
"""


def measure(cmd, env, output=False):
    """(wall seconds, peak RSS MiB) of one child process (and its stdout, with ``output``)."""
    began = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE if output else subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    out = proc.stdout.read().decode() if output else None
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - began
    if status != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed: {proc.stderr.read().decode()[-2000:]}")
    return (wall, usage.ru_maxrss / 1024) + ((out,) if output else ())


def make_data(n: int, path: Path) -> Path:
    """The default dataset's texts and labels repeated to ``n`` rows, each repeat's texts
    perturbed by a numbered suffix (`` (1)``, `` (2)``, ...) so no two texts are equal."""
    import pandas as pd

    from poolkit.data.readers import load_default_examples

    base_texts, base_labels = load_default_examples()
    texts = [t if i < len(base_texts) else f"{t} ({i // len(base_texts)})"
             for i, t in ((i, base_texts[i % len(base_texts)]) for i in range(n))]
    labels = [base_labels[i % len(base_labels)] for i in range(n)]
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
    return path


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", default="1000,4000,16000")
    parser.add_argument("--poolers", default="4,8,16")
    parser.add_argument("--modes", default="10000,100000",
                        help="texts for the cache-mode part (part 3)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="warm runs per point (best taken; pooler counts interleaved)")
    args = parser.parse_args()

    import numpy as np
    import pandas as pd
    from common import save

    modes = [int(x) for x in args.modes.split(",") if x]
    if modes:
        cache_modes(modes)
    poolkit = [sys.executable, "-m", "poolkit", "run", "--seeds", "3"]
    builtins = ["cls", "bert_pooler", "mean", "max"]
    four = ["--poolers", ",".join(builtins)]
    text_rows, pooler_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for n in [int(x) for x in args.texts.split(",") if x]:
            data = make_data(n, tmp / f"data-{n}.csv")
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

        if args.poolers:
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

    if pooler_rows:
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


def cache_modes(sizes):
    """Part 3: each cache mode's entry size and peak RSS at ``sizes`` texts, then the
    projection to 1M and 100M documents."""
    import pandas as pd
    from common import save

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for n in sizes:
            data = make_data(n, tmp / f"data-{n}.csv")
            for mode in ("tokens", "pooled"):
                cache = tmp / f"cache-{mode}-{n}"
                env = {**os.environ, "CI": "1"}
                wall, rss, out = measure([sys.executable, "-c", STAGES, str(data), str(cache),
                                          mode], env, output=True)
                got = json.loads(out.strip().splitlines()[-1])
                entry = Path(got["entry"])
                size = dir_bytes(entry)
                encoder_s = json.loads((entry / "meta.json").read_text())["encode_seconds"]
                data_file = entry / ("tokens.bin" if mode == "tokens" else "features.bin")
                ideal = (2 * got["tokens"] * got["hidden"] * 1 if mode == "tokens"
                         else 4 * n * sum(got["dims"]))
                rows.append({
                    "texts": n, "mode": mode, "real tokens": got["tokens"],
                    "entry MiB": round(size / 2**20, 1),
                    "formula": "2 x tokens x hidden x layers" if mode == "tokens"
                    else "4 x N x sum(D)",
                    "formula MiB": round(ideal / 2**20, 1),
                    "data file / formula": round(data_file.stat().st_size / ideal, 4),
                    "entry / formula": round(size / ideal, 4),
                    "peak RSS MiB": round(rss), "features MiB": round(got["features_bytes"] / 2**20, 1),
                    "encode stage s": round(got["encode_s"], 1),
                    "encoder loop s": round(encoder_s, 1),
                    "tokens/s": round(got["tokens"] / encoder_s),
                    "wall s": round(wall, 1),
                })
                shutil.rmtree(cache)
    table = pd.DataFrame(rows)
    notes = [
        "texts: the default dataset's 4,866 texts repeated, each repeat perturbed by a numbered "
        "suffix (' (1)', ' (2)', ...); default model (6 layers, hidden 384), last layer, the 4 "
        "built-ins (sum(D) = 4 x 384); each row a cold process running the encode and pool "
        "stages of a run (pipeline.encode, pipeline.pool) with --cache-mode as shown",
        "encode stage: loading the model, tokenizing, the encoder loop; tokens/s: real tokens "
        "over the encoder loop (encoder, cache writes, and in pooled mode the pooling)",
    ]
    first, last = min(sizes), max(sizes)
    if first != last:
        for mode in ("pooled", "tokens"):
            a = table[(table.texts == first) & (table["mode"] == mode)].iloc[0]
            b = table[(table.texts == last) & (table["mode"] == mode)].iloc[0]
            grew = b["peak RSS MiB"] - a["peak RSS MiB"]
            features = b["features MiB"] - a["features MiB"]
            notes.append(
                f"{mode}: {first:,} -> {last:,} texts, peak RSS grows {grew:.0f} MiB, the "
                f"features themselves {features:.0f} MiB; growth beyond the features "
                f"{grew - features:.0f} MiB = {(grew - features) / a['peak RSS MiB']:.1%} of the "
                f"{first:,}-text peak")
    save("scaling-modes", table, notes)
    projection(table[table["mode"] == "tokens"].iloc[-1])


#: The projected corpus: documents of this many tokens, a BERT-base-sized encoder.
DOC_TOKENS, LAYERS, HIDDEN = 200, 12, 768
#: Assumed, not measured here (no GPU was lent): bf16 dense peak of one H100/H200
#: and the share of it an encoder's forward pass reaches; scaling efficiency over GPUs.
GPU_PEAK_FLOPS, GPU_UTILIZATION, SCALING_EFFICIENCY = 989e12, 0.40, 0.90


def flops_per_token(layers: int, hidden: int, seq: int) -> float:
    """Forward FLOPs per token of a BERT encoder: 24 h^2 per layer (QKV, output, and
    the 4h feed-forward) plus 4 seq h for attention scores and values."""
    return layers * (24 * hidden * hidden + 4 * seq * hidden)


def projection(measured):
    """scaling-projection.md: disk per mode and encoder time for 1M and 100M documents,
    from this machine's measured rate (``measured``: a tokens-mode row)."""
    import pandas as pd
    from common import save

    # the measured model: 6 layers, hidden 384, its texts' mean length
    mean_len = measured["real tokens"] / measured["texts"]
    cpu_flops = measured["tokens/s"] * flops_per_token(6, 384, mean_len)
    per_token = flops_per_token(LAYERS, HIDDEN, DOC_TOKENS)
    gpu_tokens = GPU_PEAK_FLOPS * GPU_UTILIZATION / per_token
    cpu_tokens = cpu_flops / per_token
    rows = []
    for docs in (1_000_000, 100_000_000):
        tokens = docs * DOC_TOKENS
        gpu_hours = tokens / gpu_tokens / 3600
        rows.append({
            "documents": f"{docs:,}",
            "tokens cache, 1 layer": _bytes(2 * tokens * HIDDEN),
            "tokens cache, 13 layers": _bytes(2 * tokens * HIDDEN * (LAYERS + 1)),
            "pooled, 4 poolers x 1 layer": _bytes(4 * docs * 4 * HIDDEN),
            "pooled, 4 poolers x 13 layers": _bytes(4 * docs * 4 * HIDDEN * (LAYERS + 1)),
            "encoder hours, this CPU": f"{tokens / cpu_tokens / 3600:,.0f}",
            "encoder hours, 1 GPU": f"{gpu_hours:.3g}",
            "wall h, 8 GPUs": f"{gpu_hours / (8 * SCALING_EFFICIENCY):.3g}",
            "wall h, 64 GPUs": f"{gpu_hours / (64 * SCALING_EFFICIENCY):.3g}",
        })
    write_rate = gpu_tokens * 2 * HIDDEN
    save("scaling-projection", pd.DataFrame(rows), [
        f"on paper: {DOC_TOKENS}-token documents, a {LAYERS}-layer {HIDDEN}-wide encoder "
        f"(BERT-base), {flops_per_token(LAYERS, HIDDEN, DOC_TOKENS) / 1e6:.0f} MFLOP per token "
        "forward (24 h^2 + 4 seq h per layer); the tokens cache in fp16, pooled features float32",
        f"this CPU: measured {measured['tokens/s']:,.0f} tokens/s on the default model "
        f"({measured['texts']:,} texts of {mean_len:.1f} tokens) = {cpu_flops / 1e9:.0f} GFLOP/s "
        f"of encoder work, so {cpu_tokens:,.0f} tokens/s on the projected encoder",
        f"GPU: NOT measured (no GPU was lent); assumed {GPU_PEAK_FLOPS / 1e12:.0f} TFLOP/s bf16 "
        f"peak (H100/H200 dense) at {GPU_UTILIZATION:.0%} utilization = {gpu_tokens:,.0f} "
        f"tokens/s per GPU; 8 and 64 GPUs at {SCALING_EFFICIENCY:.0%} scaling efficiency "
        "(encoding shards by batch with no communication; the loss is stragglers and start-up)",
        f"at that rate one GPU writes {write_rate / 1e9:.1f} GB/s of fp16 token states per "
        f"cached layer (pooled, 4 poolers: {gpu_tokens / DOC_TOKENS * 16 * HIDDEN / 1e6:.0f} "
        "MB/s): a token cache on GPUs is bound by the disk, a pooled one is not",
    ])


def _bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if count < 1000 or unit == "PB":
            return f"{count:,.1f} {unit}"
        count /= 1000


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
