"""The Python API: ``pool`` for features, ``run`` for the whole comparison."""

import time
from pathlib import Path

import numpy as np

from .cache import default_cache_dir
from .data import DEFAULT_DATASET_NAME
from .errors import Interrupted, PluginFailure, PoolkitError
from .isolation import DEFAULT_TIMEOUT
from .manager import collect_poolers, get_plugin_manager
from .pooler import Pooler
from .runs import RunDirectory, RunStore, pooler_fingerprint, run_key
from .training import HeadConfig

DEFAULT_POOLERS = ("cls", "bert_pooler", "mean", "max")
#: The most head seeds a run takes (each seed is a head per feature set).
MAX_SEEDS = 1000


def _silent(message: str) -> None:
    pass


def check_seeds(seeds) -> list[int]:
    """The seed list of ``seeds`` (a count N: 0..N-1, or the seeds themselves)."""
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        if not 1 <= seeds <= MAX_SEEDS:
            raise PoolkitError(f"--seeds {seeds}: give a count from 1 to {MAX_SEEDS}")
        return list(range(int(seeds)))
    try:
        seed_list = [int(s) for s in seeds]
    except (TypeError, ValueError):
        raise PoolkitError(f"seeds={seeds!r}: give a count or a list of integers") from None
    if not 1 <= len(seed_list) <= MAX_SEEDS or min(seed_list) < 0:
        raise PoolkitError(f"seeds={seeds!r}: give 1 to {MAX_SEEDS} seeds, each 0 or more")
    if len(set(seed_list)) != len(seed_list):
        raise PoolkitError(f"seeds={seeds!r} lists a seed twice")
    return seed_list


def check_split_seed(split_seed) -> int:
    """``--split-seed`` as an int in numpy's seed range 0..2**32-1."""
    if isinstance(split_seed, bool) or not isinstance(split_seed, (int, np.integer)) \
            or not 0 <= split_seed < 2**32:
        raise PoolkitError(f"--split-seed {split_seed}: give an integer from 0 to {2**32 - 1}")
    return int(split_seed)


def resolve_poolers(names=None, plugins_dir=None, log=_silent, timeout=DEFAULT_TIMEOUT):
    """``({name: pooler}, {name: plugin}, load_errors)`` for the requested poolers.

    ``names`` may mix registered names and :class:`Pooler` instances; ``None``
    means every registered pooler. An unknown name is an error listing the
    known ones; plugins that failed to load are returned as one-line errors.
    """
    pm = get_plugin_manager(plugins_dir=plugins_dir, timeout=timeout)
    registered = collect_poolers(pm, timeout=timeout)
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
                     batch_size=None, layers=None, before_encoding=None,
                     trust_remote_code=False, progress=False, timeout=DEFAULT_TIMEOUT,
                     log=_silent):
    """Encode ``texts`` once (or read them from the cache) and pool them with every pooler.

    ``layers`` selects the hidden layers single-layer poolers run on (a spec
    for :func:`~poolkit.encoder.parse_layers`; default the last). Returns
    ``(features, failures, info)``: ``features[id]`` float32 ``(len(texts), D)``
    in input order per fixed feature set (``pooler@layer``), ``failures[id]`` a
    one-line reason, and ``info`` with the encoder, the cache, whether the
    encoder ran, the encoding and pooling seconds, and ``sets`` (every
    :class:`~poolkit.features.FeatureSet`, trainable and failed ones included:
    trainable ones are trained from ``info["cache"]``). ``timeout`` bounds each
    call into a pooler, in seconds.
    """
    from .encoder import Encoder, encode_to_cache, load_encoder, parse_layers, pick_device
    from .features import feature_sets, pool_cache, setup_poolers

    if not len(texts):
        raise PoolkitError("no texts to encode")
    device = pick_device(device)
    if isinstance(model, Encoder):
        encoder = model
    else:
        encoder = load_encoder(model, max_length=max_length, trust_remote_code=trust_remote_code)
    specs, setup_failed = setup_poolers(poolers, encoder, len(texts), timeout)
    sets, failures = feature_sets(poolers, specs, parse_layers(layers, encoder.num_layers),
                                  encoder.num_layers, failed=setup_failed)
    needed = sorted({layer for key, fs in sets.items() if key not in failures
                     for layer in fs.layers}) or [encoder.num_layers]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    began = time.perf_counter()
    cache, ran = encode_to_cache(encoder, texts, root, device=device, dtype=cache_dtype,
                                 precision=precision, max_batch_tokens=max_batch_tokens,
                                 max_texts=batch_size, progress=progress, layers=needed,
                                 before_encoding=before_encoding, log=log)
    encode_seconds = time.perf_counter() - began
    log(f"{'encoded' if ran else 'cache hit:'} {len(texts)} texts, {int(cache.lengths.sum())} "
        f"tokens, layers {','.join(map(str, needed))}, with {encoder.name} on {device} in "
        f"{encode_seconds:.1f}s ({cache.path})")
    fixed = {key: fs for key, fs in sets.items() if key not in failures and not fs.trainable}
    began = time.perf_counter()
    features, pool_failures = pool_cache(cache, fixed, progress=progress, timeout=timeout)
    pool_seconds = time.perf_counter() - began
    failures.update(pool_failures)
    info = {"encoder": encoder, "encoder_ran": ran, "cache": cache, "device": device,
            "encode_seconds": round(encode_seconds, 3), "pool_seconds": round(pool_seconds, 3),
            "tokens": int(cache.lengths.sum()),
            "sets": sets, "layers": needed}
    return features, failures, info


def pool(texts, poolers=DEFAULT_POOLERS, model=None, max_length=None, batch_size=None,
         device=None, *, cache_dir=None, plugins_dir=None, cache_dtype="fp16", precision="bf16"):
    """Pooled features ``{name: (len(texts), D) float32 array}`` in input order.

    ``poolers`` are registered names or :class:`Pooler` instances (fixed ones:
    a trainable pooler has no features before training); ``model`` a Hugging
    Face name or local path (``None``: the embedded default). Single-layer
    poolers pool the last layer. A pooler that fails raises
    :class:`PoolkitError` naming it.
    """
    selected, _, _ = resolve_poolers(list(poolers), plugins_dir=plugins_dir)
    for name, pooler in selected.items():
        if getattr(pooler, "trainable", False):
            raise PoolkitError(f"pooler '{name}' is trainable: it has features only inside "
                               "'poolkit run', trained with each head")
    features, failures, info = compute_features(
        list(texts), selected, model, max_length=max_length, cache_dir=cache_dir,
        device=device, cache_dtype=cache_dtype, precision=precision, batch_size=batch_size,
    )
    if failures:
        key, reason = next(iter(failures.items()))
        raise PoolkitError(f"pooler '{info['sets'][key].pooler_name}' failed: {reason}")
    return {info["sets"][key].pooler_name: array for key, array in features.items()}


def run(data=None, *, text_col="text", label_col="label", test_data=None, labels=None,
        model=None, poolers=None, seeds=3, out=None, plugins_dir=None, cache_dir=None,
        max_length=None, device=None, cache_dtype="fp16", precision="bf16", split_seed=0,
        validation_size=0.1, test_size=0.1, head: HeadConfig | None = None, layers=None,
        predictions=False, empty_texts="skip", trust_remote_code=False,
        pooler_timeout=DEFAULT_TIMEOUT, progress=False, log=_silent):
    """Run the whole comparison; return the results table (one row per pooler × layer × seed).

    ``layers`` selects the hidden layers single-layer poolers run on (``-1``,
    ``"-4..-1"``, ``"all"``, ...; default the last). With ``out`` the run
    directory is written there (``predictions=True`` adds each test item's
    predictions). ``result.attrs`` holds ``summary`` (a DataFrame, with 95%
    intervals and significance groups), ``pairs`` (paired tests between
    feature sets), ``failures`` ({pooler@layer: reason}), ``label_names``,
    ``settings`` and ``recipe``. ``pooler_timeout`` bounds each call into a
    plugin, in seconds. Ctrl-C stops the run with :class:`~poolkit.errors.Interrupted`
    once what finished is saved; the same call then resumes.
    """
    from .isolation import handlers

    with handlers():
        try:
            return _run(data, text_col=text_col, label_col=label_col, test_data=test_data,
                        labels=labels, model=model, poolers=poolers, seeds=seeds, out=out,
                        plugins_dir=plugins_dir, cache_dir=cache_dir, max_length=max_length,
                        device=device, cache_dtype=cache_dtype, precision=precision,
                        split_seed=split_seed, validation_size=validation_size,
                        test_size=test_size, head=head, layers=layers, predictions=predictions,
                        empty_texts=empty_texts, trust_remote_code=trust_remote_code,
                        pooler_timeout=pooler_timeout, progress=progress, log=log)
        except KeyboardInterrupt:
            saved = f" and the finished heads in {Path(out) / 'heads'}" if out is not None else ""
            raise Interrupted(f"interrupted: the encoder's progress is saved in the cache{saved}; "
                              "run the same command again to resume") from None


def _run(data, *, text_col, label_col, test_data, labels, model, poolers, seeds, out,
         plugins_dir, cache_dir, max_length, device, cache_dtype, precision, split_seed,
         validation_size, test_size, head, layers, predictions, empty_texts, trust_remote_code,
         pooler_timeout, progress, log):
    import pandas as pd

    from .data import load_dataset
    from .encoder import load_encoder
    from .isolation import check_timeout, plugin_code
    from .metrics import compute_metrics
    from .results import RUN_FILES, predictions_table, summarize, write_run_dir
    from .stats import paired_comparisons
    from .training import train_heads, train_trainable

    seed_list = check_seeds(seeds)
    head = head or HeadConfig()
    head.validate()
    split_seed = check_split_seed(split_seed)
    pooler_timeout = check_timeout(pooler_timeout)
    began = time.perf_counter()
    selected, plugins, load_errors = resolve_poolers(poolers, plugins_dir=plugins_dir, log=log,
                                                     timeout=pooler_timeout)
    dataset = load_dataset(data, text_col=text_col, label_col=label_col, test_data=test_data,
                           labels=labels, split_seed=split_seed,
                           validation_size=validation_size, test_size=test_size,
                           empty_texts=empty_texts, log=log)
    encoder = load_encoder(model, max_length=max_length, trust_remote_code=trust_remote_code)

    def writable():  # before the encoder runs, not after; once the model is known to load
        if out is not None:
            RunDirectory(out).claim(RUN_FILES)

    log("labels: " + ", ".join(f"{i}={n}" for i, n in enumerate(dataset.label_names)))
    log("split: " + ", ".join(f"{k} {len(v)}" for k, v in dataset.splits.items()))
    features, failures, info = compute_features(
        dataset.texts, selected, encoder, cache_dir=cache_dir, layers=layers,
        before_encoding=writable, device=device, cache_dtype=cache_dtype, precision=precision,
        progress=progress, timeout=pooler_timeout, log=log,
    )
    writable()
    sets = info["sets"]

    def report(key):
        log(f"error: pooler '{sets[key].pooler_name}' failed on layer {sets[key].layer}: "
            f"{failures[key]}")

    for key in failures:
        report(key)

    store = RunStore(out, run_key(info["cache"].path, dataset, head), log=log)
    fingerprints = {name: pooler_fingerprint(pooler) for name, pooler in selected.items()}
    runnable = [key for key in sets if key not in failures]
    done, missing = {}, {}
    for key in runnable:
        for seed in seed_list:
            saved = store.load(key, fingerprints[sets[key].pooler_name], seed)
            if saved is None:
                missing.setdefault(key, []).append(seed)
            else:
                done[key, seed] = saved
    if done:
        log(f"reusing {len(done)} finished pooler x seed results from {out}")
    train_began = time.perf_counter()
    y_test = dataset.labels[dataset.splits["test"]]

    def finish(result):
        fs = sets[result.pooler]
        row = {
            "pooler": fs.pooler_name, "layer": fs.layer, "plugin": plugins[fs.pooler_name],
            "seed": result.seed, "dim": fs.dim, "best_epoch": result.best_epoch,
            "epochs": result.epochs, **compute_metrics(y_test, result.probabilities),
        }
        store.save(result.pooler, row, fingerprints[fs.pooler_name], result.probabilities)
        done[result.pooler, result.seed] = (row, result.probabilities)

    # Fixed heads train stacked per group of feature sets missing the same
    # seeds; each head's result depends only on its features and seed.
    groups = {}
    for key, seeds_missing in missing.items():
        if key in features:
            groups.setdefault(tuple(seeds_missing), []).append(key)
    for seeds_missing, keys in groups.items():
        for result in train_heads({k: features[k] for k in keys}, dataset.labels, dataset.splits,
                                  dataset.num_labels, list(seeds_missing), head,
                                  device=info["device"], progress=progress):
            finish(result)
    for key, seeds_missing in missing.items():
        if key in features:
            continue
        log(f"training pooler '{sets[key].pooler_name}' (layer {sets[key].layer}) with its heads")
        try:
            # No budget for the whole training: each call into the pooler has its own.
            with plugin_code(timeout=None):
                trained = train_trainable(info["cache"], sets[key], dataset.labels,
                                          dataset.splits, dataset.num_labels, seeds_missing,
                                          head, device=info["device"], timeout=pooler_timeout)
        except PluginFailure as exc:
            failures[key] = exc.reason
            report(key)
            continue
        for result in trained:
            finish(result)
    train_seconds = time.perf_counter() - train_began

    order = [(key, seed) for key in sets for seed in seed_list if (key, seed) in done]
    rows = [done[item][0] for item in order]
    results = pd.DataFrame(rows, columns=None if rows else ["pooler", "layer", "plugin", "seed",
                                                             "dim"])
    probabilities = {}
    for key, seed in order:
        probabilities.setdefault(key, []).append(done[key, seed][1])
    probabilities = {key: np.stack(value) for key, value in probabilities.items()}
    pairs = paired_comparisons(probabilities, y_test, seed=split_seed)
    summary = summarize(results, {key: (sets[key].pooler_name, sets[key].layer, reason)
                                  for key, reason in failures.items()}, pairs)
    settings = {
        "data": str(data) if data is not None else DEFAULT_DATASET_NAME,
        "test_data": str(test_data) if test_data is not None else None,
        "text_col": text_col, "label_col": label_col, "model": encoder.name,
        "max_length": encoder.max_length, "poolers": list(selected), "seeds": seed_list,
        "layers": info["layers"], "num_layers": encoder.num_layers,
        "split_seed": split_seed, "split_sizes": {k: len(v) for k, v in dataset.splits.items()},
        "majority_rate": float(np.bincount(y_test).max() / len(y_test)) if len(y_test) else None,
        "head": vars(head), "device": info["device"], "cache": str(info["cache"].path),
        "cache_dtype": cache_dtype, "precision": precision if info["device"] != "cpu" else "fp32",
        "encoder_ran": info["encoder_ran"], "tokens": info["tokens"],
        "encode_seconds": info["encode_seconds"], "pool_seconds": info["pool_seconds"],
        "train_seconds": round(train_seconds, 3),
        "total_seconds": round(time.perf_counter() - began, 3),
        "failures": failures, "plugin_errors": load_errors,
    }
    recipe = recipe_card(encoder, dataset, settings, selected, plugins, fingerprints)
    if out is not None:
        items = None
        if predictions:
            items = predictions_table(dataset, probabilities, sets, seed_list)
        write_run_dir(Path(out), results, summary, dataset.label_names, settings,
                      pairs=pairs, recipe=recipe, predictions=items)
    results.attrs.update(summary=summary, pairs=pairs, failures=failures,
                         label_names=dataset.label_names, settings=settings,
                         plugin_errors=load_errors, recipe=recipe)
    return results


def recipe_card(encoder, dataset, settings: dict, poolers: dict, plugins: dict,
                fingerprints: dict) -> dict:
    """What reproduces a run: model and tokenizer identity, data hashes, layers,
    seeds, splits, head settings, plugins and library versions."""
    import hashlib
    import importlib.metadata
    import platform

    from . import __version__
    from .data import default_dataset_path

    identity = encoder.identity()
    tokenizer = encoder.describe_tokenizer()
    data_files = {}
    for name in dict.fromkeys(dataset.files):
        path = default_dataset_path() if name == DEFAULT_DATASET_NAME else Path(name)
        data_files[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    splits = hashlib.sha256()
    for name in sorted(dataset.splits):
        splits.update(name.encode() + np.ascontiguousarray(dataset.splits[name]).tobytes())

    def version(package):
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "model": encoder.name,
        "model_path": encoder.path,
        "model_revision": encoder.settings.get("_commit_hash"),
        "model_fingerprint": identity["model_fingerprint"],
        "tokenizer": tokenizer["class"],
        "tokenizer_sha256": identity["tokenizer"],
        "lowercase": tokenizer["lowercase"],
        "max_length": encoder.max_length,
        "layers": settings["layers"],
        "num_layers": settings["num_layers"],
        "data_sha256": data_files,
        "text_col": settings["text_col"], "label_col": settings["label_col"],
        "labels": dataset.label_names,
        "split_seed": settings["split_seed"],
        "split_sizes": settings["split_sizes"],
        "split_sha256": splits.hexdigest(),
        "seeds": settings["seeds"],
        "head": settings["head"],
        "poolers": {name: {"plugin": plugins[name], "source_sha256": fingerprints[name]}
                    for name in poolers},
        "device": settings["device"], "precision": settings["precision"],
        "cache_dtype": settings["cache_dtype"],
        "versions": {"poolkit": __version__, "python": platform.python_version(),
                     **{p: version(p) for p in ("torch", "transformers", "tokenizers",
                                                 "scikit-learn", "scipy", "numpy", "pandas")}},
    }
