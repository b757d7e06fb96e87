"""Shared bits of the benchmark scripts: machine description and saving tables."""

import os
import platform
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
             f"({torch.get_num_threads()} threads)"]
    if torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name()}")
    return "; ".join(parts)


def save(name: str, table, notes: list) -> Path:
    """Print ``table`` with the machine and ``notes``; save it as Markdown under results/."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join([
        f"# {name}", "", f"Machine: {machine()}  ", f"Run: {stamp}", "",
        table.to_markdown(index=False), "", *[f"- {n}" for n in notes], "",
    ])
    print(text)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(text)
    return path


def matmul_flops(dtype=None, device="cpu", n=2048, repeats=5) -> float:
    """Best FLOP/s of an ``n × n`` matmul on ``device``."""
    import time

    import torch

    dtype = dtype or torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        if device != "cpu":
            torch.cuda.synchronize()
        began = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - began)
    return 2 * n**3 / best


def encoder_flops(config, lengths) -> float:
    """Forward FLOPs of a BERT encoder over texts of ``lengths`` real tokens (no padding).

    Per layer and text of length L: 8·L·H² (Q, K, V, output projections),
    4·L·H·I (feed-forward), 4·L²·H (attention scores and weighted sum).
    """
    import numpy as np

    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    lengths = np.asarray(lengths, dtype=np.float64)
    per_layer = 8 * lengths * h * h + 4 * lengths * h * i + 4 * lengths**2 * h
    return float(layers * per_layer.sum())
