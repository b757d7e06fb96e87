"""A run, stage by stage: resolve poolers, load data, encode, pool, train, evaluate, report.

Each stage is a function of the settings it uses (the groups of
:meth:`~poolkit.config.RunConfig.group`: ``load_data`` the data group and the
:class:`~poolkit.config.Plan`; ``encode`` the cache and poolers groups; ``pool`` the
encoded states; ``train`` the heads group; ``evaluate`` the evaluation group; ``report``,
which writes every option into settings.json, the whole
:class:`~poolkit.config.RunConfig`) and what earlier stages produced, returning a small
dataclass of its own; :func:`run` chains them. Where a change belongs (a metric, a head kind, an
export format, ...) is mapped in ARCHITECTURE.md.
"""

import copy
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np

from poolkit.config import Plan, RunConfig
from poolkit.data.dataset import load_dataset
from poolkit.data.readers import DEFAULT_DATASET_NAME, data_digest, default_dataset_path
from poolkit.encoding import distributed
from poolkit.encoding.cache import default_cache_dir
from poolkit.encoding.encode import encode_to_cache, pick_device
from poolkit.encoding.layers import parse_layers
from poolkit.errors import Interrupted, ModelFailed, PoolkitError
from poolkit.evaluation.decisions import rope_of
from poolkit.evaluation.metrics import METRICS, compute_metrics
from poolkit.evaluation.stats import N_BOOT, Comparison, compare
from poolkit.heads.base import FailedHead, HeadTask
from poolkit.identity import RunIdentity, digest, pooler_fingerprint, splits_digest, texts_digest
from poolkit.pipeline.results import (
    RUN_FILES,
    mark_own_pooling,
    predictions_table,
    summarize,
    write_run_dir,
)
from poolkit.pipeline.runs import RunDirectory, RunStore, check_saved_models
from poolkit.pooling.features import (
    BatchPooling,
    feature_sets,
    finetuned_sets,
    pool_cache,
    setup_poolers,
)
from poolkit.pooling.isolation import DEFAULT_TIMEOUT, handlers
from poolkit.pooling.manager import DEFAULT_PLUGINS, collect_poolers, get_plugin_manager
from poolkit.pooling.pooler import Pooler
from poolkit.version import __version__


def _silent(message: str) -> None:
    pass


@dataclass
class Poolers:
    """The poolers a run compares: ``selected`` ``{name: Pooler}``, the plugin that
    registered each, each one's source fingerprint, and plugins that failed to load."""

    selected: dict
    plugins: dict
    fingerprints: dict
    load_errors: list


@dataclass
class Encoded:
    """The encoder's pass (or the cache hit that stood in for it).

    ``sets`` holds every feature set, failed ones included (to name them);
    ``failures`` ``{id: reason}`` those whose pooler failed so far.
    """

    encoder: object
    cache: object
    ran: bool
    device: str
    sets: dict
    failures: dict
    layers: list
    seconds: float
    #: several models (``--model a,b``): each one's own pass, by label; its sets are
    #: in ``sets`` under ids prefixed with the label
    parts: dict | None = None


@dataclass
class Features:
    """Pooled features ``{id: (N, D) float32}`` of the fixed feature sets."""

    arrays: dict
    failures: dict
    seconds: float


@dataclass
class Training:
    """Every head of the run, ``{(feature set id, seed): TrainedHead}``, and how many
    of them came from the run directory rather than training."""

    heads: dict
    reused: int
    failures: dict
    seconds: float
    #: the key the heads are saved under (:meth:`~poolkit.identity.RunIdentity.heads_key`);
    #: with several models, ``{label: key}``
    heads_key: str | dict | None = None


@dataclass
class Evaluation:
    """The scored heads: ``results`` (a row per feature set × seed, a column per
    metric), the test probabilities per feature set ``(seeds, n, C)``, the paired
    tests and the summary over seeds."""

    results: object
    probabilities: dict
    pairs: object
    summary: object
    #: the comparison as comparison.json keeps it (:func:`comparison_json`)
    comparison: str | None = None


@dataclass
class RunResult:
    """What :func:`poolkit.run` returns: the tables, what failed, the label names
    (``labels[i]`` is head output column *i*), the settings and the recipe card."""

    results: object
    summary: object
    pairs: object
    failures: dict
    labels: list
    settings: dict
    recipe: dict
    plugin_errors: list = field(default_factory=list)
    out: Path | None = None


def resolve_poolers(names=None, plugins_dir=None, log=_silent, timeout=None) -> Poolers:
    """Load the plugins and pick the poolers ``names`` (registered names or
    :class:`~poolkit.Pooler` instances; ``None``: every registered pooler).

    An unknown name is an error listing the known ones; plugins that failed to
    load are logged and kept as one-line errors.
    """
    timeout = timeout or DEFAULT_TIMEOUT
    pm = get_plugin_manager(plugins_dir=plugins_dir, timeout=timeout)
    registered = collect_poolers(pm, timeout=timeout)
    for error in pm.load_errors:
        log(f"error: {error}")
    selected, plugins = {}, {}
    for item in list(registered) if names is None else names:
        if isinstance(item, Pooler):
            selected[item.name], plugins[item.name] = item, type(item).__module__
            continue
        if item not in registered:
            known = ", ".join(registered) or "none"
            broken = f"; {len(pm.load_errors)} plugin(s) failed to load" if pm.load_errors else ""
            raise PoolkitError(
                f"unknown pooler '{item}' (registered: {known}{broken}); see 'poolkit plugins'"
            )
        selected[item], plugins[item] = registered[item]
    if not selected:
        raise PoolkitError("no poolers to run; see 'poolkit plugins'")
    if names is None:
        joined = [name for name, plugin in plugins.items() if plugin not in DEFAULT_PLUGINS
                  and not plugin.endswith(".py")]
        if joined:
            log(f"note: pooler(s) {', '.join(joined)} from installed plugins join this run, and "
                "every pooler enlarges the multiple-comparison correction; pick poolers with "
                "--poolers")
    return Poolers(selected, plugins, {n: pooler_fingerprint(p) for n, p in selected.items()},
                   list(pm.load_errors))


def load_data(data, plan: Plan, log=_silent):
    """The labelled texts and their folds (a :class:`~poolkit.data.dataset.Dataset`), as the
    ``plan``'s protocol splits them; ``data`` is the run's data settings
    (``RunConfig.group("data")``)."""
    protocol, folds = plan.protocol, plan.folds
    dataset = load_dataset(data.data, text_col=data.text_col, label_col=data.label_col,
                           test_data=data.test_data, labels=data.labels,
                           split_seed=data.split_seed,
                           validation_size=data.validation_size if protocol.validation else 0.0,
                           test_size=data.test_size, empty_texts=data.empty_texts,
                           encoding=data.encoding, max_train_texts=data.max_train_texts,
                           label_pattern=data.label_pattern, max_texts=data.max_texts,
                           text_pair_col=data.text_pair_col, folds=folds, log=log)
    log("labels: " + ", ".join(f"{i}={n}" for i, n in enumerate(dataset.label_names)))
    first = dataset.folds[0]
    sizes = ", ".join(f"{k} {len(v)}" for k, v in first.items())
    if folds == 1:
        log(f"split: {sizes}")
    else:
        log(f"{folds}-fold cross-fitting: each fold {sizes} (fold 1); every one of the "
            f"{len(dataset.scored)} items scored once, out of fold")
    if data.max_train_texts is not None:
        log(f"--max-train-texts {data.max_train_texts}: every head trains on a stratified "
            "subset of its fold's training part; validation and test items are all kept")
    if protocol.name != "default":
        log(f"protocol {protocol.name}: {protocol.about}")
    return dataset


def encode(encoder, poolers: dict, texts, *, cache, pooling, plan: Plan, device=None,
           precision: str = "bf16", finetune=None, baseline=None, progress: bool = False,
           before_encoding=None, max_texts=None, log=_silent) -> Encoded:
    """Set the poolers up against ``encoder`` (a loaded
    :class:`~poolkit.encoding.model.Encoder`) and run it once over ``texts`` for the layers
    their feature sets need, or find those states in the cache.

    ``cache`` and ``pooling`` are the run's ``cache`` and ``poolers`` settings groups
    (:meth:`~poolkit.config.RunConfig.group`), ``plan`` its :class:`~poolkit.config.Plan`;
    ``device`` and ``precision`` the encoder's; ``finetune`` (a
    :class:`~poolkit.heads.base.FineTuneConfig`) adds fine-tuned feature sets; a
    ``baseline`` no feature set answers is refused before encoding. ``before_encoding``
    is called once the encoder is about to run (not on a cache hit). ``max_texts`` caps the
    texts per encoder batch (default: only the token budget).
    """
    if not len(texts):
        raise PoolkitError("no texts to encode")
    device = pick_device(device)
    if distributed.launched() and device == "cuda":  # torchrun: one GPU per rank
        device = f"cuda:{distributed.local_rank()}"
    for note in encoder.notes:
        log(note)
    if encoder.causal:
        log(f"model {encoder.name} is decoder-only: its attention is causal (a token sees "
            "only those before it), so its last token is the one that has read the whole text")
    sets, failures, needed = _feature_sets(encoder, poolers, len(texts), pooling, plan,
                                           finetune, log)
    if baseline is not None:  # a --baseline no feature set answers: an error now
        _baseline_id(baseline, {k: 1 for k in sets if k not in failures}, sets)
    root = Path(cache.cache_dir) if cache.cache_dir is not None else default_cache_dir()
    began = time.perf_counter()
    entry, ran = encode_to_cache(encoder, texts, root, device=device, dtype=cache.cache_dtype,
                                 precision=precision, max_texts=max_texts,
                                 progress=progress and distributed.rank() == 0, layers=needed,
                                 before_encoding=before_encoding, log=log,
                                 mode=cache.cache_mode, pool=_fixed(sets, failures),
                                 budget=cache.cache_budget,
                                 make_pooling=partial(BatchPooling,
                                                      timeout=pooling.pooler_timeout))
    seconds = time.perf_counter() - began
    return _encoded(encoder, entry, ran, device, sets, failures, needed, seconds, len(texts), log)


def encode_for(config: RunConfig, encoder, poolers: dict, texts, **options) -> Encoded:
    """:func:`encode` with the settings of a run's ``config`` (its ``cache`` and ``poolers``
    groups, plan, device, precision, fine-tuning, baseline, progress); ``options`` are
    :func:`encode`'s own (``before_encoding``, ``max_texts``, ``log``)."""
    return encode(encoder, poolers, texts, cache=config.group("cache"),
                  pooling=config.group("poolers"), plan=config.planned, device=config.device,
                  precision=config.precision, finetune=config.finetune,
                  baseline=config.baseline, progress=config.progress, **options)


def _feature_sets(encoder, poolers: dict, texts: int, pooling, plan: Plan, finetune,
                  log) -> tuple:
    """``(sets, failures, layers the encoder must give)``: the poolers set up against the
    encoder, their feature sets on the layers asked for (the trainable ones only where the
    protocol trains them), and their fine-tuned sets with ``finetune``."""
    specs, setup_failed = setup_poolers(poolers, encoder, texts, pooling.pooler_timeout)
    sets, failures = feature_sets(poolers, specs, parse_layers(pooling.layers, encoder.num_layers),
                                  encoder.num_layers, failed=setup_failed)
    if not plan.protocol.trainable:
        sets = _without_trainable(sets, f"the {plan.protocol.name} protocol trains "
                                  "scikit-learn probes on fixed poolers", log)
    needed = sorted({layer for key, fs in sets.items() if key not in failures
                     for layer in fs.layers}) or [encoder.num_layers]
    if finetune is not None:
        tuned, tuned_failures = finetuned_sets(sets, failures, encoder.num_layers)
        sets, failures = {**sets, **tuned}, {**failures, **tuned_failures}
    return sets, failures, needed


def _encoded(encoder, cache, ran, device, sets, failures, needed, seconds, texts: int,
             log) -> Encoded:
    """The :class:`Encoded` of an encoder pass (``cache`` ``None`` on a torchrun rank other
    than 0), its one line said."""
    if cache is not None and cache.mode == "pooled":
        sets = _without_trainable(sets, "they read token states, which a pooled cache does "
                                  "not keep (use --cache-mode tokens)", log)
    if cache is None:  # a torchrun rank other than 0: its share is written
        return Encoded(encoder, None, ran, device, sets, failures, needed, seconds)
    attention = attention_of(encoder, cache)
    log(f"{'encoded' if ran else 'cache hit:'} {texts} texts, {int(cache.lengths.sum())} "
        f"tokens, layers {','.join(map(str, needed))}, with {encoder.name} on {device}"
        f"{f' (attention: {attention})' if attention else ''} in {seconds:.1f}s ({cache.path})")
    return Encoded(encoder, cache, ran, device, sets, failures, needed, seconds)


def _fixed(sets: dict, failures: dict) -> dict:
    """The feature sets whose features come from the cache: fixed poolers on the frozen
    encoder, not failed."""
    return {key: fs for key, fs in sets.items()
            if key not in failures and not fs.trainable and not fs.finetuned}


def _without_trainable(sets: dict, why: str, log) -> dict:
    """``sets`` without the trainable poolers' frozen feature sets, which this run
    cannot train (``why``, said in one note naming them). (A pooler that failed its
    setup has no trainable feature set: its failure stays.)"""
    left_out = sorted({fs.pooler_name for fs in sets.values() if fs.trainable and not fs.finetuned})
    if left_out:
        log(f"note: trainable pooler(s) {', '.join(left_out)} left out: {why}")
    return {key: fs for key, fs in sets.items() if not fs.trainable or fs.finetuned}


def pool(encoded: Encoded, *, progress: bool = False, timeout=DEFAULT_TIMEOUT) -> Features:
    """Every fixed feature set's features, in one pass over the cached states (or,
    from a pooled cache, read from it)."""
    fixed = _fixed(encoded.sets, encoded.failures)
    began = time.perf_counter()
    if encoded.cache.mode == "pooled":
        cache = encoded.cache
        failures = {key: cache.failed[key] for key in fixed if key in cache.failed}
        arrays = {key: cache.features(key) for key in fixed if key not in failures}
    else:
        arrays, failures = pool_cache(encoded.cache, fixed, progress=progress,
                                      timeout=timeout)
    return Features(arrays, failures, time.perf_counter() - began)


def train(poolers: Poolers, dataset, encoded: Encoded, features: Features, store, *, settings,
          plan: Plan, timeout=DEFAULT_TIMEOUT, precision: str = "bf16", progress: bool = False,
          log=_silent) -> Training:
    """A head per runnable feature set × fold × seed: reused from ``store`` (a
    :class:`~poolkit.pipeline.runs.RunStore`) when saved under the same key, else trained
    by the protocol's head kind that wants it and saved as it finishes (with
    its scores on a single split, so a re-run reuses those too).

    ``settings`` is the run's ``heads`` settings group (the heads' settings, fine-tuning,
    whether to keep fine-tuned models), ``plan`` its :class:`~poolkit.config.Plan`;
    ``timeout`` a trainable pooler's, ``precision`` the fine-tuned encoder's."""
    sets = encoded.sets
    failures = {**encoded.failures, **features.failures}
    heads, missing = {}, {}
    for fold in range(len(dataset.folds)):
        for key, fs in sets.items():
            if key in failures:
                continue
            for seed in plan.seeds:
                saved = store.load(key, poolers.fingerprints[fs.pooler_name], seed, fold)
                if saved is None:
                    missing.setdefault(fold, {}).setdefault(key, []).append(seed)
                else:
                    heads[key, fold, seed] = saved
    reused = len(heads)
    if reused:
        log(f"reusing {reused} finished heads from {store.out}")
    kinds = plan.protocol.kinds(features.arrays, encoded.cache, timeout, progress, log)
    if settings.finetune is not None:
        from poolkit.heads.finetune import FineTunedHeads

        kinds.append(FineTunedHeads(encoded.encoder, dataset.texts, settings.finetune, store,
                                    timeout, precision, settings.save_models, log))
    began = time.perf_counter()
    for fold, jobs_of_fold in sorted(missing.items()):
        task = HeadTask(dataset.labels, dataset.folds[fold], dataset.num_labels, settings.head,
                        encoded.device, fold, len(dataset.folds))
        for kind in kinds:
            jobs = [(sets[key], seeds) for key, seeds in jobs_of_fold.items()
                    if key not in failures and kind.wants(sets[key])]
            for head in kind.train(task, jobs) if jobs else ():
                fs = sets[head.feature_set]
                if isinstance(head, FailedHead):
                    failures[head.feature_set] = head.reason
                    _report_failure(log, fs, head.reason, store.label)
                    continue
                if len(dataset.folds) == 1:
                    head.metrics = compute_metrics(task.labels[task.test], head.probabilities)
                store.save(head, poolers.fingerprints[fs.pooler_name])
                heads[head.feature_set, fold, head.seed] = head
    for key in failures:  # a feature set that failed in one fold has no out-of-fold scores
        for item in [item for item in heads if item[0] == key]:
            del heads[item]
    return Training(heads, reused, failures, time.perf_counter() - began, store.key)


def evaluate(poolers: Poolers, dataset, encoded: Encoded, training: Training, *, settings,
             seeds, split_seed: int = 0, out=None) -> Evaluation:
    """Every feature set × seed scored on the shared metrics over the scored items
    (each item by the head of the fold that held it out), the feature sets
    compared pairwise on those items, and the summary with intervals.

    ``settings`` is the run's ``evaluation`` settings group (the primary metric, the
    baseline); ``seeds`` the plan's; ``split_seed`` seeds the bootstrap; a comparison
    computed before from the same probabilities is read back from ``out``."""
    import pandas as pd

    scored = dataset.scored
    y = dataset.labels[scored]
    position = np.empty(len(dataset.labels), dtype=np.int64)
    position[scored] = np.arange(len(scored))
    folds = range(len(dataset.folds))
    fold_of = np.empty(len(scored), dtype=np.int64)  # the fold that scored each item
    for fold in folds:
        fold_of[position[dataset.folds[fold]["test"]]] = fold
    rows, probabilities = [], {}
    for key, fs in encoded.sets.items():
        for seed in seeds:
            if any((key, fold, seed) not in training.heads for fold in folds):
                continue
            heads = [training.heads[key, fold, seed] for fold in folds]
            combined = np.empty((len(scored), dataset.num_labels))
            for fold, head in zip(folds, heads):
                combined[position[dataset.folds[fold]["test"]]] = head.probabilities
            probabilities.setdefault(key, []).append(combined)
            one = len(heads) == 1
            rows.append({**({"model": fs.model} if fs.model is not None else {}),
                         "pooler": fs.pooler_name, "layer": fs.layer, "encoder": fs.encoder,
                         "plugin": poolers.plugins[fs.pooler_name], "seed": seed, "dim": fs.dim,
                         # per fold: the mean over folds
                         "best_epoch": heads[0].best_epoch if one else
                         round(float(np.mean([h.best_epoch for h in heads])), 1),
                         "epochs": heads[0].epochs if one else
                         round(float(np.mean([h.epochs for h in heads])), 1),
                         **(heads[0].metrics if one and heads[0].metrics
                            else compute_metrics(y, combined, fold_of))})
    results = pd.DataFrame(rows, columns=None if rows else ["pooler", "layer", "encoder", "plugin",
                                                             "seed", "dim"])
    probabilities = {key: np.stack(value) for key, value in probabilities.items()}
    baseline = _baseline_id(settings.baseline, probabilities, encoded.sets)
    ratio = float(np.mean([len(f["test"]) / max(len(f["train"]), 1) for f in dataset.folds]))
    options = dict(seed=split_seed, primary=settings.metric, baseline=baseline,
                   folds=fold_of, test_train_ratio=ratio,
                   rope=rope_of(settings.rope, settings.metric))
    saved = Path(out) / "comparison.json" if out is not None else None
    key = comparison_key(probabilities, y, options)
    comparison = read_comparison(saved, key)
    if comparison is None:
        comparison = compare(probabilities, y, **options)
    summary = summarize(results, {key: _failed_row(encoded.sets[key], reason)
                                  for key, reason in training.failures.items()},
                        comparison, primary=settings.metric, baseline=baseline)
    summary = mark_own_pooling(summary, own_poolings(encoded))
    return Evaluation(results, probabilities, comparison.pairs, summary,
                      comparison_json(key, comparison))


def own_poolings(encoded: Encoded) -> dict:
    """``{model label (None for one model): pooler}``: the pooler that computes each
    model's own pooling, for models whose sentence-transformers folder names one."""
    parts = encoded.parts or {None: encoded}
    return {label: part.encoder.recipe.pooling for label, part in parts.items()
            if part.encoder.recipe is not None and part.encoder.recipe.pooling}


def comparison_key(probabilities: dict, y, options: dict) -> str:
    """sha256 of what :func:`~poolkit.evaluation.stats.compare` computes from: every feature set's
    probabilities (by name, in order), the labels, its options and poolkit's version."""
    import hashlib
    import json

    hashed = hashlib.sha256(json.dumps(
        [__version__, N_BOOT, list(METRICS), {k: v for k, v in options.items() if k != "folds"}],
        default=str).encode())
    for part in (y, options["folds"]):
        hashed.update(np.ascontiguousarray(part, dtype=np.int64).tobytes())
    for name, probs in probabilities.items():
        hashed.update(name.encode() + b"\0")
        hashed.update(np.ascontiguousarray(probs, dtype=np.float64).tobytes())
    return hashed.hexdigest()


def read_comparison(path, key: str):
    """The :class:`~poolkit.evaluation.stats.Comparison` saved at ``path`` under ``key``, or
    ``None`` (missing, another key, or unreadable: then it is computed again)."""
    import json

    import pandas as pd

    if path is None or not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        if saved["key"] != key:
            return None
        frame = saved["pairs"]
        pairs = pd.DataFrame({c: pd.Series(frame["data"][c], dtype=frame["dtypes"][c])
                              for c in frame["columns"]})
        intervals = {name: {m: tuple(v) for m, v in metrics.items()}
                     for name, metrics in saved["intervals"].items()}
        return Comparison(pairs, saved["values"], intervals)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def comparison_json(key: str, comparison) -> str:
    """``comparison`` as comparison.json keeps it (floats exact), under ``key``: a re-run
    whose heads predict the same reads it back and computes nothing."""
    import json

    pairs = comparison.pairs
    frame = {"columns": list(pairs.columns), "dtypes": {c: str(pairs[c].dtype) for c in pairs},
             "data": {c: pairs[c].tolist() for c in pairs}}
    values = {name: {m: float(v) for m, v in metrics.items()}
              for name, metrics in comparison.values.items()}
    intervals = {name: {m: [float(x) for x in v] for m, v in metrics.items()}
                 for name, metrics in comparison.intervals.items()}
    return json.dumps({"key": key, "pairs": frame, "values": values, "intervals": intervals})


def _failed_row(fs, reason: str) -> dict:
    return {**({"model": fs.model} if fs.model is not None else {}), "pooler": fs.pooler_name,
            "layer": fs.layer, "encoder": fs.encoder, "reason": reason}


def _baseline_id(baseline, probabilities: dict, sets: dict):
    """The feature set ``--baseline`` names (``pooler@layer``, or a pooler with one
    finished feature set), or ``None``."""
    if baseline is None:
        return None
    if baseline in probabilities:
        return baseline
    matches = [key for key in probabilities if sets[key].pooler_name == baseline]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(probabilities) or "none"
    detail = ("name one of its layers as pooler@layer" if matches
              else "it is not among the finished feature sets")
    raise PoolkitError(f"--baseline {baseline}: {detail} ({known})")


def report(config: RunConfig, poolers: Poolers, dataset, encoded: Encoded, features: Features,
           training: Training, evaluation: Evaluation, began: float) -> RunResult:
    """The run's settings and recipe card, and its run directory written (with
    ``config.out``); returns the :class:`RunResult`."""
    settings = run_settings(config, poolers, dataset, encoded, features, training, began)
    recipe = recipe_card(config, poolers, dataset, encoded)
    if encoded.parts is not None:  # several models: what belongs to each, by label
        settings, recipe = _per_model(config, poolers, dataset, encoded, settings, recipe)
    if config.out is not None:
        items = None
        if config.predictions:
            items = predictions_table(dataset, evaluation.probabilities, encoded.sets,
                                      config.seed_list())
        write_run_dir(Path(config.out), evaluation.results, evaluation.summary,
                      dataset.label_names, settings, pairs=evaluation.pairs, recipe=recipe,
                      predictions=items, comparison=evaluation.comparison)
    return RunResult(evaluation.results, evaluation.summary, evaluation.pairs,
                     training.failures, dataset.label_names, settings, recipe,
                     poolers.load_errors, Path(config.out) if config.out is not None else None)


def run_settings(config: RunConfig, poolers: Poolers, dataset, encoded: Encoded,
                 features: Features, training: Training, began: float) -> dict:
    """settings.json: everything the run used, what it found, and where its time went."""
    encoder = encoded.encoder
    y_scored = dataset.labels[dataset.scored]
    protocol, folds = config.plan()
    return {
        "data": str(config.data) if config.data is not None else DEFAULT_DATASET_NAME,
        "test_data": str(config.test_data) if config.test_data is not None else None,
        "text_col": config.text_col, "label_col": config.label_col,
        **_given(config, "label_pattern", "max_texts", "text_pair_col"), "model": encoder.name,
        "max_length": encoder.max_length, "poolers": list(poolers.selected),
        "seeds": config.seed_list(), "layers": encoded.layers, "num_layers": encoder.num_layers,
        "split_seed": config.split_seed,
        "protocol": protocol.name, "folds": folds, "scored_items": len(y_scored),
        "split_sizes": {k: len(v) for k, v in dataset.folds[0].items()},
        "majority_rate": float(np.bincount(y_scored).max() / len(y_scored)),
        "metric": config.metric, "baseline": config.baseline,
        "rope": rope_of(config.rope, config.metric),
        "head": asdict(config.head),
        "finetune": asdict(config.finetune) if config.finetune is not None else None,
        "max_train_texts": config.max_train_texts,
        "device": encoded.device, "cache": str(encoded.cache.path),
        "cache_mode": encoded.cache.mode, "cache_dtype": config.cache_dtype,
        "precision": config.precision if encoded.device != "cpu" else "fp32",
        "encoder_ran": encoded.ran, "tokens": int(encoded.cache.lengths.sum()),
        "encode_seconds": round(encoded.seconds, 3), "pool_seconds": round(features.seconds, 3),
        "train_seconds": round(training.seconds, 3),
        "total_seconds": round(time.perf_counter() - began, 3),
        "failures": training.failures, "plugin_errors": poolers.load_errors,
        # what rebuilds the run's stages later (poolkit predict, export-model)
        "options": config.saved(), "heads_key": training.heads_key,
    }


#: What a recipe card says of its model, given per model when a run has several.
_MODEL_CARD = ("model", "model_path", "model_revision", "model_fingerprint", "tokenizer",
               "tokenizer_sha256", "lowercase", "max_length", "attention", "prompt",
               "sentence_transformers", "layers", "num_layers")


def _per_model(config, poolers, dataset, encoded: Encoded, settings: dict,
               recipe: dict) -> tuple:
    """The settings and the recipe card of a run of several models: what belongs to each
    model, by its label, in place of the one model's."""
    about = {label: {"model": part.encoder.name, "max_length": part.encoder.max_length,
                     "layers": part.layers, "num_layers": part.encoder.num_layers,
                     "cache": str(part.cache.path) if part.cache is not None else None,
                     "encoder_ran": part.ran,
                     "tokens": int(part.cache.lengths.sum()) if part.cache is not None else 0,
                     "encode_seconds": round(part.seconds, 3)}
             for label, part in encoded.parts.items()}
    settings = {k: v for k, v in settings.items()
                if k not in ("max_length", "num_layers", "cache", "tokens")}
    settings.update(model=[part["model"] for part in about.values()], models=about)
    cards = {label: recipe_card(config, poolers, dataset, part)
             for label, part in encoded.parts.items()}
    recipe = {**{k: v for k, v in recipe.items() if k not in _MODEL_CARD},
              "models": {label: {k: card[k] for k in _MODEL_CARD if k in card}
                         for label, card in cards.items()}}
    return settings, recipe


def attention_of(encoder, cache) -> str | None:
    """The attention implementation the cached states were computed with: the loaded
    model's, else what the entry recorded (``None`` for entries older than the record)."""
    return encoder.attention or (cache.meta.get("attention") if cache is not None else None)


def recipe_card(config: RunConfig, poolers: Poolers, dataset, encoded: Encoded) -> dict:
    """What reproduces a run: model and tokenizer identity, data hashes, layers,
    seeds, splits, head settings, plugins and library versions."""
    import importlib.metadata
    import platform

    encoder = encoded.encoder
    identity = encoder.identity()
    tokenizer = encoder.describe_tokenizer()
    data_files = {name: data_digest(default_dataset_path() if name == DEFAULT_DATASET_NAME
                                    else name)
                  for name in dict.fromkeys(dataset.files)}

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
        **_known(attention=attention_of(encoder, encoded.cache), prompt=encoder.prompt,
                 sentence_transformers=_recipe_record(encoder.recipe)),
        "layers": encoded.layers,
        "num_layers": encoder.num_layers,
        "data_sha256": data_files,
        "text_col": config.text_col, "label_col": config.label_col,
        **_given(config, "label_pattern", "max_texts", "text_pair_col"),
        "labels": dataset.label_names,
        "split_seed": config.split_seed,
        "protocol": config.plan()[0].name, "folds": len(dataset.folds),
        "split_sizes": {k: len(v) for k, v in dataset.folds[0].items()},
        "split_sha256": splits_digest(dataset),
        "seeds": config.seed_list(),
        "head": asdict(config.head),
        "finetune": asdict(config.finetune) if config.finetune is not None else None,
        "max_train_texts": config.max_train_texts,
        "poolers": {name: {"plugin": poolers.plugins[name],
                           "source_sha256": poolers.fingerprints[name]}
                    for name in poolers.selected},
        "device": encoded.device,
        "precision": config.precision if encoded.device != "cpu" else "fp32",
        "cache_dtype": config.cache_dtype,
        "versions": {"poolkit": __version__, "python": platform.python_version(),
                     **{p: version(p) for p in ("torch", "transformers", "tokenizers",
                                                 "scikit-learn", "scipy", "numpy", "pandas")}},
    }


def _known(**values) -> dict:
    """``values`` that are known (not ``None``): a run without them writes the recipe it
    wrote before they were recorded."""
    return {name: value for name, value in values.items() if value is not None}


def _recipe_record(recipe) -> dict | None:
    """What the recipe card keeps of a sentence-transformers folder's recipe."""
    if recipe is None:
        return None
    return {"pooling": recipe.pooling, "pooling_mode": recipe.pooling_mode,
            "max_seq_length": recipe.max_seq_length, "normalize": recipe.normalize,
            "prompts": recipe.prompts, "notes": recipe.notes}


def _given(config: RunConfig, *names) -> dict:
    """The options ``names`` that were given (not ``None``): settings and recipe name
    them only then, so a run without them writes the files it wrote before they existed."""
    return _known(**{name: getattr(config, name) for name in names})


def _report_failure(log, feature_set, reason: str, label=None) -> None:
    on = f" of model {label}" if label is not None else ""
    log(f"error: pooler '{feature_set.pooler_name}' failed on layer {feature_set.layer}{on}: "
        f"{reason}")


def run(config: RunConfig, log=_silent) -> RunResult | None:
    """The whole comparison, stage by stage (see the module docstring).

    With several models (``--model a,b``) each is encoded, pooled and its heads
    trained on its own (its own cache entry, its heads in ``heads/<label>/``); their
    feature sets, prefixed with the model's label, are then evaluated together: one
    table and one set of paired tests on the same items.

    Under torchrun every rank encodes its share of the batches; rank 0 then runs
    the other stages alone and the others return ``None``.
    """
    config.validate()
    began = time.perf_counter()
    poolers = resolve_poolers(config.poolers, config.plugins_dir, log, config.pooler_timeout)
    dataset = load_data(config.group("data"), config.planned, log)
    if config.poolers is None and not dataset.pairs:
        poolers = _single_text_poolers(poolers)
    identity = RunIdentity.of(config)
    _same_run_on_every_rank(identity, dataset, poolers)
    if config.save_models and config.out is not None and distributed.rank() == 0:
        check_saved_models(config.out)  # once, before any model: it reads every saved one

    def claim():  # before the encoder runs, not after; once the model is known to load
        if config.out is not None and distributed.rank() == 0:
            RunDirectory(config.out).claim(RUN_FILES)

    models = config.model_list()
    labels = model_labels(models) if len(models) > 1 else [None]
    # every model described before any is encoded: a model that cannot be read stops the
    # run at once (one line naming it), not after the others' encoding and heads
    encoders = [config.encoder(name) for name in models]
    parts = {}
    for label, name, encoder in zip(labels, models, encoders):
        part = _run_model(replace(config, model=name), label, encoder, poolers, dataset,
                          identity, claim, log)
        if part is not None:
            parts[label] = part
    if distributed.rank() != 0:
        return None
    if all(part[0].cache is None for part in parts.values()):
        raise PoolkitError(f"every model failed: {'; '.join(_model_reasons(parts))}")
    encoded, features, training = parts[None] if labels == [None] else _together(parts)
    evaluation = evaluate(poolers, dataset, encoded, training, settings=config.group("evaluation"),
                          seeds=config.planned.seeds, split_seed=config.split_seed,
                          out=config.out)
    return report(config, poolers, dataset, encoded, features, training, evaluation, began)


def _run_model(config: RunConfig, label, encoder, poolers: Poolers, dataset, identity, claim,
               log) -> tuple | None:
    """``(Encoded, Features, Training)`` of one model (``label``: its name among several,
    else ``None``): encoded, pooled and its heads trained; ``None`` on a torchrun rank
    other than 0 once its share is encoded."""
    # each model sets its own copies of the poolers up (bert_pooler takes its weights)
    selected = poolers.selected if label is None else copy.deepcopy(poolers.selected)
    if label is not None:
        log(f"model {label}: {encoder.name}")
    try:
        encoded = encode_for(config, encoder, selected, dataset.texts, before_encoding=claim,
                             log=log)
        if distributed.rank() != 0:
            return None
        claim()
        for key, reason in encoded.failures.items():
            _report_failure(log, encoded.sets[key], reason, label)
        features = pool(encoded, progress=config.progress, timeout=config.pooler_timeout)
        for key, reason in features.failures.items():
            _report_failure(log, encoded.sets[key], reason, label)
        store = RunStore(config.out, identity.heads_key(encoded.cache.key, dataset),
                         log=log, folds=len(dataset.folds), subfolder=label)
        training = train(poolers, dataset, encoded, features, store,
                         settings=config.group("heads"), plan=config.planned,
                         timeout=config.pooler_timeout, precision=config.precision,
                         progress=config.progress, log=log)
        return encoded, features, training
    except ModelFailed as exc:
        # one model of several failing mid-run (its own forward) fails alone: the others'
        # results are written, exit 3 (under torchrun every rank stops instead)
        if label is None or distributed.world_size() > 1:
            raise
        log(f"error: model {label} failed: {exc}")
        return _failed_model(config, selected, encoder, str(exc))


def _failed_model(config: RunConfig, poolers: dict, encoder, reason: str) -> tuple:
    """``(Encoded, Features, Training)`` of a model that failed as a whole: each of its
    feature sets failed with ``reason``, so the summary names them and the run exits 3."""
    why = f"model failed: {reason}"
    sets, failures = feature_sets(poolers, {}, parse_layers(config.layers, encoder.num_layers),
                                  encoder.num_layers, failed={name: why for name in poolers})
    if config.finetune is not None:
        tuned, tuned_failures = finetuned_sets(sets, failures, encoder.num_layers)
        sets, failures = {**sets, **tuned}, {**failures, **tuned_failures}
    return (Encoded(encoder, None, False, "", sets, failures, [], 0.0), Features({}, {}, 0.0),
            Training({}, 0, failures, 0.0))


def _model_reasons(parts: dict) -> list:
    return [f"{label}: {next(iter(part[2].failures.values()), '')}"
            for label, part in parts.items()]


def _same_run_on_every_rank(identity, dataset, poolers) -> None:
    """Under torchrun, before anything is written: every rank was started with the same
    options, data (its texts, labels and splits) and plugins as rank 0, or every rank
    stops with one line naming the first that differs. (A rank with other texts would
    write its batches into rank 0's cache entry.)"""
    if distributed.world_size() <= 1:
        return

    mine = digest({"options": identity.options, "texts": texts_digest(dataset.texts),
                   "labels": dataset.label_names, "splits": splits_digest(dataset),
                   "plugins": poolers.fingerprints})
    every = distributed.gather(mine)
    other = next((r for r, theirs in enumerate(every) if theirs != every[0]), None)
    if other is not None:
        raise PoolkitError(f"rank {other} of {len(every)} was started with other options, data, "
                           "model or plugins than rank 0 (their run identities differ); start "
                           "every rank with the same command on the same files")


def _single_text_poolers(poolers: Poolers) -> Poolers:
    """``poolers`` without those that pool pairs of texts only (``segments = True``):
    every registered pooler, on single texts, means those that pool them."""
    kept = [name for name, p in poolers.selected.items()
            if getattr(type(p), "segments", False) is not True]
    return replace(poolers, selected={n: poolers.selected[n] for n in kept},
                   plugins={n: poolers.plugins[n] for n in kept},
                   fingerprints={n: poolers.fingerprints[n] for n in kept})


def model_labels(models: list) -> list:
    """Short labels for several models: a hub name's last part or a folder's name
    (the whole name where those would clash)."""
    from pathlib import PurePath

    short = [PurePath(str(m).rstrip("/")).name if m is not None else "default" for m in models]
    if len(set(short)) < len(short):
        short = [str(m) if m is not None else "default" for m in models]
    return [label.replace(":", "_") for label in short]


def _together(parts: dict) -> tuple:
    """``(Encoded, Features, Training)`` of several models' passes, their feature
    sets and heads under ids prefixed with each model's label."""
    sets, heads, failures = {}, {}, {}
    for label, (encoded, _, training) in parts.items():
        ids = {}
        for key, fs in encoded.sets.items():
            tagged = replace(fs, model=label)
            sets[tagged.id], ids[key] = tagged, tagged.id
        heads.update({(ids[key], fold, seed): head
                      for (key, fold, seed), head in training.heads.items()})
        failures.update({ids[key]: reason for key, reason in training.failures.items()})
    passes = [item[0] for item in parts.values()]
    first = next(e for e in passes if e.cache is not None)  # (a failed model has none)
    encoded = Encoded(first.encoder, first.cache, any(e.ran for e in passes), first.device, sets,
                      {}, sorted({layer for e in passes for layer in e.layers}),
                      sum(e.seconds for e in passes), parts={k: v[0] for k, v in parts.items()})
    features = Features({}, {}, sum(item[1].seconds for item in parts.values()))
    training = Training(heads, sum(item[2].reused for item in parts.values()), failures,
                        sum(item[2].seconds for item in parts.values()),
                        {label: item[2].heads_key for label, item in parts.items()})
    return encoded, features, training


def run_config(config, log=None):
    """:func:`run` for a :class:`~poolkit.config.RunConfig`, as the CLI calls it."""
    with handlers():
        try:
            distributed.init()
            if distributed.rank() != 0 and log is not None:  # rank 0 speaks for the run
                log, said = _silent, log
                said(f"rank {distributed.rank()} of {distributed.world_size()}: encoding its "
                     "share; rank 0 runs the comparison")
            return run(config, log=log or _silent)
        except KeyboardInterrupt:
            saved = (f" and the finished heads in {config.out}/heads"
                     if config.out is not None else "")
            raise Interrupted(f"interrupted: the encoder's progress is saved in the cache{saved}; "
                              "run the same command again to resume") from None
        finally:
            distributed.shutdown()
