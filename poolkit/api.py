"""The Python API: ``pool`` for features, ``run`` for the whole comparison."""

import time
from pathlib import Path

import numpy as np

from .cache import default_cache_dir
from .data import DEFAULT_DATASET_NAME
from .errors import PoolkitError
from .manager import collect_poolers, get_plugin_manager
from .pooler import Pooler
from .runs import RunStore, ensure_writable, pooler_fingerprint, run_key
from .training import HeadConfig

DEFAULT_POOLERS = ("cls", "bert_pooler", "mean", "max")


def _silent(message: str) -> None:
    pass


def resolve_poolers(names=None, plugins_dir=None, log=_silent):
    """``({name: pooler}, {name: plugin}, load_errors)`` for the requested poolers.

    ``names`` may mix registered names and :class:`Pooler` instances; ``None``
    means every registered pooler. An unknown name is an error listing the
    known ones; plugins that failed to load are returned as one-line errors.
    """
    pm = get_plugin_manager(plugins_dir=plugins_dir)
    registered = collect_poolers(pm)
    for error in pm.load_errors:
        log(f"error: {error}")
    if names is None:
        names = list(registered)
    poolers, plugins = {}, {}
    for item in names:
        if isinstance(item, Pooler):
            poolers[item.name], plugins[item.name] = item, type(item).__module__
            continue
        if item not in registered:
            known = ", ".join(registered) or "none"
            broken = f"; {len(pm.load_errors)} plugin(s) failed to load" if pm.load_errors else ""
            raise PoolkitError(
                f"unknown pooler '{item}' (registered: {known}{broken}); see 'poolkit plugins'"
            )
        poolers[item], plugins[item] = registered[item]
    if not poolers:
        raise PoolkitError("no poolers to run; see 'poolkit plugins'")
    return poolers, plugins, list(pm.load_errors)


def compute_features(texts, poolers: dict, model=None, *, max_length=None, cache_dir=None,
                     device=None, cache_dtype="fp16", precision="bf16", max_batch_tokens=None,
                     batch_size=None,
                     trust_remote_code=False, progress=False, log=_silent):
    """Encode ``texts`` once (or read them from the cache) and pool them with every pooler.

    Returns ``(features, failures, info)``: ``features[name]`` float32
    ``(len(texts), D)`` in input order, ``failures[name]`` a one-line reason,
    and ``info`` with the encoder, whether it ran and the cache path.
    """
    from .encoder import Encoder, encode_to_cache, load_encoder, pick_device
    from .features import pool_cache, setup_poolers

    if not len(texts):
        raise PoolkitError("no texts to encode")
    device = pick_device(device)
    if isinstance(model, Encoder):
        encoder = model
    else:
        encoder = load_encoder(model, max_length=max_length, trust_remote_code=trust_remote_code)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    began = time.perf_counter()
    cache, ran = encode_to_cache(encoder, texts, root, device=device, dtype=cache_dtype,
                                 precision=precision, max_batch_tokens=max_batch_tokens,
                                 max_texts=batch_size, progress=progress, log=log)
    encode_seconds = time.perf_counter() - began
    log(f"{'encoded' if ran else 'cache hit:'} {len(texts)} texts, {int(cache.lengths.sum())} "
        f"tokens with {encoder.name} on {device} in {encode_seconds:.1f}s ({cache.path})")
    failures = setup_poolers(poolers, encoder)
    working = {n: p for n, p in poolers.items() if n not in failures}
    features, pool_failures = pool_cache(cache, working, progress=progress)
    failures.update(pool_failures)
    info = {"encoder": encoder, "encoder_ran": ran, "cache": str(cache.path), "device": device,
            "encode_seconds": round(encode_seconds, 3), "tokens": int(cache.lengths.sum())}
    return features, failures, info


def pool(texts, poolers=DEFAULT_POOLERS, model=None, max_length=None, batch_size=None,
         device=None, *, cache_dir=None, plugins_dir=None, cache_dtype="fp16", precision="bf16"):
    """Pooled features ``{name: (len(texts), D) float32 array}`` in input order.

    ``poolers`` are registered names or :class:`Pooler` instances; ``model`` a
    Hugging Face name or local path (``None``: the embedded default). A pooler
    that fails raises :class:`PoolkitError` naming it.
    """
    selected, _, _ = resolve_poolers(list(poolers), plugins_dir=plugins_dir)
    features, failures, _ = compute_features(
        list(texts), selected, model, max_length=max_length, cache_dir=cache_dir,
        device=device, cache_dtype=cache_dtype, precision=precision, batch_size=batch_size,
    )
    if failures:
        name, reason = next(iter(failures.items()))
        raise PoolkitError(f"pooler '{name}' failed: {reason}")
    return features


def run(data=None, *, text_col="text", label_col="label", test_data=None, labels=None,
        model=None, poolers=None, seeds=3, out=None, plugins_dir=None, cache_dir=None,
        max_length=None, device=None, cache_dtype="fp16", precision="bf16", split_seed=0,
        validation_size=0.1, test_size=0.1, head: HeadConfig | None = None,
        empty_texts="skip", trust_remote_code=False, progress=False, log=_silent):
    """Run the whole comparison; return the results table (one row per pooler × seed).

    With ``out`` the run directory is written there. ``result.attrs`` holds
    ``summary`` (a DataFrame), ``failures`` ({pooler: reason}), ``label_names``
    and ``settings``.
    """
    import pandas as pd

    from .data import load_dataset
    from .encoder import load_encoder
    from .metrics import compute_metrics
    from .results import summarize, write_run_dir
    from .training import train_heads

    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise PoolkitError("--seeds must be at least 1")
    head = head or HeadConfig()
    began = time.perf_counter()
    selected, plugins, load_errors = resolve_poolers(poolers, plugins_dir=plugins_dir, log=log)
    dataset = load_dataset(data, text_col=text_col, label_col=label_col, test_data=test_data,
                           labels=labels, split_seed=split_seed,
                           validation_size=validation_size, test_size=test_size,
                           empty_texts=empty_texts, log=log)
    encoder = load_encoder(model, max_length=max_length, trust_remote_code=trust_remote_code)
    if out is not None:  # before the encoder runs, not after
        ensure_writable(out)
    log("labels: " + ", ".join(f"{i}={n}" for i, n in enumerate(dataset.label_names)))
    log("split: " + ", ".join(f"{k} {len(v)}" for k, v in dataset.splits.items()))
    features, failures, info = compute_features(
        dataset.texts, selected, encoder, cache_dir=cache_dir,
        device=device, cache_dtype=cache_dtype, precision=precision, progress=progress, log=log,
    )
    for name, reason in failures.items():
        log(f"error: pooler '{name}' failed: {reason}")

    store = RunStore(out, run_key(info["cache"], dataset, head))
    fingerprints = {name: pooler_fingerprint(selected[name]) for name in features}
    rows, missing = [], {}
    for name in features:
        for seed in seed_list:
            row = store.load(name, fingerprints[name], seed)
            if row is None:
                missing.setdefault(name, []).append(seed)
            else:
                rows.append(row)
    if rows:
        log(f"reusing {len(rows)} finished pooler x seed results from {out}")
    train_began = time.perf_counter()
    y_test = dataset.labels[dataset.splits["test"]]
    # Heads train stacked per group of poolers missing the same seeds; each
    # head's result depends only on its own pooler and seed.
    groups = {}
    for name, seeds_missing in missing.items():
        groups.setdefault(tuple(seeds_missing), []).append(name)
    for seeds_missing, names in groups.items():
        trained = train_heads({n: features[n] for n in names}, dataset.labels, dataset.splits,
                              dataset.num_labels, list(seeds_missing), head,
                              device=info["device"], progress=progress)
        for result in trained:
            row = {
                "pooler": result.pooler, "plugin": plugins[result.pooler], "seed": result.seed,
                "dim": int(features[result.pooler].shape[1]), "best_epoch": result.best_epoch,
                "epochs": result.epochs, **compute_metrics(y_test, result.probabilities),
            }
            store.save(row, fingerprints[result.pooler])
            rows.append(row)
    train_seconds = time.perf_counter() - train_began
    order = {(name, seed): i for i, (name, seed) in
             enumerate((n, s) for n in features for s in seed_list)}
    rows.sort(key=lambda r: order[(r["pooler"], r["seed"])])
    results = pd.DataFrame(rows, columns=None if rows else ["pooler", "plugin", "seed", "dim"])
    summary = summarize(results, failures)
    settings = {
        "data": str(data) if data is not None else DEFAULT_DATASET_NAME,
        "test_data": str(test_data) if test_data is not None else None,
        "text_col": text_col, "label_col": label_col, "model": info["encoder"].name,
        "max_length": info["encoder"].max_length, "poolers": list(selected), "seeds": seed_list,
        "split_seed": split_seed, "split_sizes": {k: len(v) for k, v in dataset.splits.items()},
        "majority_rate": float(np.bincount(y_test).max() / len(y_test)) if len(y_test) else None,
        "head": vars(head), "device": info["device"], "cache": info["cache"],
        "cache_dtype": cache_dtype, "precision": precision if info["device"] != "cpu" else "fp32",
        "encoder_ran": info["encoder_ran"], "tokens": info["tokens"],
        "encode_seconds": info["encode_seconds"], "train_seconds": round(train_seconds, 3),
        "total_seconds": round(time.perf_counter() - began, 3),
        "failures": failures, "plugin_errors": load_errors,
    }
    if out is not None:
        write_run_dir(Path(out), results, summary, dataset.label_names, settings)
    results.attrs.update(summary=summary, failures=failures, label_names=dataset.label_names,
                         settings=settings, plugin_errors=load_errors)
    return results
