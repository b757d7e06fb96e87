"""A run's winner as one model: its final head, and predicting new texts with it.

A run's heads measure: one per fold × seed, each scored on items it did not see.
Labelling new texts needs one model. A feature set's *final head* is trained on
every labelled item of the run (each fold's train, validation and test parts
together), with the run's head settings and its first seed, for a fixed number
of epochs, as no held-out part is left to stop on: the median over the run's
fold × seed heads of the epoch their early stopping kept (rounded half up). It
is saved beside them in ``heads/`` (``<set>-final-seed<N>``: its record, its
probabilities on the run's items and its weights, under the same heads key,
plugin fingerprint and checksum as every head) and reused by the next call.

A fine-tuned set (``-ft``) is not fitted again: its model is the one the run
kept of fold 1 with ``--save-models``, trained on that fold's training part (the
log says so).

:func:`load` rebuilds the run's stages from its settings.json (encode finds the
run's cache entry, or encodes its texts again), checks that the model and the
pooler's plugin are those the run used, and returns a :class:`Classifier`: the
encoder, the pooler and the head as one module, scoring texts in float32, with
the standardization of the head's inputs folded into its weights.
"""

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from poolkit.config import RunConfig
from poolkit.encoding.encode import pick_device
from poolkit.encoding.layers import parse_layers
from poolkit.encoding.tokenization import tokenize
from poolkit.errors import PoolkitError
from poolkit.heads.base import FailedHead, HeadTask
from poolkit.heads.linear import train_heads
from poolkit.heads.trainable import TrainablePoolerHeads
from poolkit.identity import RunIdentity
from poolkit.pipeline.results import texts_columns
from poolkit.pipeline.runs import RunDirectory, RunStore
from poolkit.pipeline.stages import encode_for, load_data, model_labels, pool, resolve_poolers
from poolkit.pooling.features import feature_id, feature_sets, finetuned_sets, setup_poolers


def _silent(message: str) -> None:
    pass


@dataclass
class SavedRun:
    """What a finished run directory holds that predicting needs."""

    path: Path
    settings: dict
    recipe: dict
    labels: list
    summary: object

    def finished_sets(self) -> dict:
        """``{set id: summary row}`` of the sets that finished, best first (the summary's
        order: the run's primary metric)."""
        rows = self.summary[self.summary["status"] == "ok"]
        return {feature_id(r["pooler"], r["layer"], r["encoder"], r.get("model") or None): r
                for _, r in rows.iterrows()}


def read_run(run_dir) -> SavedRun:
    """The settings, recipe, labels and summary of the run directory ``run_dir``; one
    line naming what is missing when it is not a finished run's."""
    import pandas as pd

    path = Path(run_dir)
    if not path.is_dir():
        raise PoolkitError(f"run directory '{path}' does not exist")
    RunDirectory(path).verify("settings.json", "recipe.json", "labels.json", "summary.csv")
    try:
        settings = json.loads((path / "settings.json").read_text())
        recipe = json.loads((path / "recipe.json").read_text())
        labels = json.loads((path / "labels.json").read_text())
        summary = pd.read_csv(path / "summary.csv", dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        name = getattr(exc, "filename", None)
        what = f"'{Path(name).name}' is missing or unreadable" if name else "a file is unreadable"
        raise PoolkitError(f"'{path}' is not a finished poolkit run directory ({what})") from None
    if "options" not in settings:
        raise PoolkitError(f"run directory '{path}' was written by an older poolkit, which "
                           "did not keep the run's options; run the comparison again")
    return SavedRun(path, settings, recipe, [labels[str(i)] for i in range(len(labels))],
                    summary)


def choose_set(run: SavedRun, name=None, log=_silent) -> str:
    """The feature set to predict with: ``name`` (a set id, or a pooler with one
    finished set), or the run's best by its primary metric."""
    finished = run.finished_sets()
    if not finished:
        raise PoolkitError(f"run directory '{run.path}' has no finished feature set")
    if name is None:
        best = next(iter(finished))
        log(f"set: {best}, the run's best by {run.settings.get('metric', 'accuracy')} "
            "(another with --set)")
        return best
    if name in finished:
        return name
    matches = [key for key, row in finished.items() if row["pooler"] == name]
    if len(matches) == 1:
        return matches[0]
    detail = "name one of its sets" if matches else "it is not among the run's finished sets"
    raise PoolkitError(f"--set {name}: {detail} ({', '.join(finished)})")


class Classifier:
    """A feature set's final model: ``predict(texts)`` (label names),
    ``predict_proba(texts)`` (``(n, C)``, columns in ``classes_`` order: the run's
    labels.json) and ``logits(texts)``. ``texts`` are strings, or ``(text,
    text_pair)`` tuples when the run's items were pairs."""

    def __init__(self, model, encoder, labels: list, set_id: str, pairs: bool, device: str,
                 log=_silent):
        self.model, self.encoder, self.set_id, self.pairs = model, encoder, set_id, pairs
        self.classes_ = np.array(labels, dtype=object)
        self.device, self.log = device, log

    def logits(self, texts, batch_size: int = 32) -> np.ndarray:
        """``(n, C)`` float32 logits of ``texts``, in their order."""
        from poolkit.heads.finetune import predict

        texts = self._checked(texts)
        ids, truncated = tokenize(self.encoder, texts)
        if truncated:
            self.log(f"warning: {truncated} of {len(texts)} texts are longer than "
                     f"{self.encoder.max_length} tokens (the run's limit) and were truncated")
        pad_id = self.encoder.tokenizer.pad_token_id or 0
        rows = np.arange(len(texts))
        return predict(self.model, ids, rows, pad_id, self.device, batch_size,
                       precision="fp32").numpy()

    def predict_proba(self, texts, batch_size: int = 32) -> np.ndarray:
        import torch

        logits = torch.from_numpy(self.logits(texts, batch_size)).double()
        return torch.softmax(logits, dim=-1).numpy()

    def predict(self, texts, batch_size: int = 32) -> np.ndarray:
        return self.classes_[self.predict_proba(texts, batch_size).argmax(axis=1)]

    def _checked(self, texts) -> list:
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise PoolkitError("no texts to predict")
        for i, text in enumerate(texts):
            parts = text if isinstance(text, tuple) else (text,)
            if isinstance(text, tuple) != self.pairs or len(parts) != (2 if self.pairs else 1) \
                    or not all(isinstance(part, str) for part in parts):
                wanted = "(text, text_pair) pairs of strings" if self.pairs else "strings"
                raise PoolkitError(f"text {i + 1}: the run's items were {wanted}; give those")
            if any(not part.strip() for part in parts):
                raise PoolkitError(f"text {i + 1} is empty (or only whitespace): there is "
                                   "nothing to predict from")
        return texts


def predictions_frame(classifier: Classifier, texts, rows=None):
    """A table of ``texts``' predictions: row (1-based, or ``rows``), text (and
    text_pair), predicted (a label name), then ``p_<label>`` per label in labels.json
    order, as a run's predictions.csv names them."""
    import pandas as pd

    probabilities = classifier.predict_proba(texts)
    frame = pd.DataFrame({"row": rows if rows is not None else np.arange(1, len(texts) + 1),
                          **texts_columns(list(texts)),
                          "predicted": classifier.classes_[probabilities.argmax(axis=1)]})
    for j, name in enumerate(classifier.classes_):
        frame[f"p_{name}"] = probabilities[:, j]
    return frame


def load(run_dir, set=None, *, cache_dir=None, device=None, force: bool = False,
         trust_remote_code: bool = False, log=_silent) -> Classifier:
    """The :class:`Classifier` of feature set ``set`` (default: the run's best) of the
    run directory ``run_dir``, training its final head first if the run directory does
    not hold it yet. ``force``: a pooler whose plugin changed since the run is used as
    it is now (a warning), not refused. A run whose model ran its own code
    (``--trust-remote-code``) is loaded only with ``trust_remote_code=True``, given again
    here. See the module docstring."""
    run = read_run(run_dir)
    if run.settings["options"].get("trust_remote_code"):
        if not trust_remote_code:
            raise PoolkitError(f"run '{run.path}' ran its model's own code "
                               "(--trust-remote-code); loading it runs that code again: give "
                               "--trust-remote-code if you trust it")
        log(f"note: the model of '{run.path}' runs its own code (--trust-remote-code)")
    set_id = choose_set(run, set, log)
    row = run.finished_sets()[set_id]
    options = run.settings["options"]
    if options.get("protocol", "default") != "default":
        raise PoolkitError(f"run directory '{run.path}' used --protocol {options['protocol']}, "
                           "whose scikit-learn probes have no final model; predict takes "
                           "runs with poolkit's own heads (the default protocol)")
    config, label, name = _config(run, row, cache_dir, device)
    poolers, fingerprint = _poolers(run, config, row["pooler"], force, log)
    encoder = _encoder(run, config, label, name)
    device = pick_device(config.device)
    key = set_id.split(":", 1)[1] if label is not None else set_id
    if row["encoder"] == "finetuned":
        model = _finetuned_model(run, config, poolers, encoder, key, label, device, log)
    else:
        head, fs = final_head(run, config, poolers, encoder, key, label, fingerprint, log)
        model = _frozen_model(encoder, fs, head, len(run.labels), device, config.pooler_timeout)
    return Classifier(model, encoder, run.labels, set_id, options.get("text_pair_col") is not None,
                      device, log)


def final_head(run: SavedRun, config, poolers, encoder, key: str, label, fingerprint: str,
               log=_silent) -> tuple:
    """``(TrainedHead, FeatureSet)``: the final head of the frozen feature set ``key``,
    reused from the run directory (without encoding anything) or trained now (see the
    module docstring) and saved."""
    saved_key = run.settings.get("heads_key")
    saved_key = saved_key.get(label) if isinstance(saved_key, dict) else saved_key
    seeds = config.seed_list()
    if saved_key is not None:
        store = RunStore(run.path, saved_key, log=log, subfolder=label)
        saved = store.load(key, fingerprint, seeds[0], "final")
        if saved is not None:
            log(f"final head of {key}: reused from {store.folder}")
            return saved, feature_set(poolers, encoder, key, config)
    dataset = load_data(config.group("data"), config.planned)
    encoded = encode_for(config, encoder, poolers.selected, dataset.texts, log=log)
    if key not in encoded.sets or key in encoded.failures:
        reason = encoded.failures.get(key, "it is not among the feature sets the run makes now")
        raise PoolkitError(f"{key}: {reason}")
    fs = encoded.sets[key]
    heads_key = RunIdentity.of(config).heads_key(encoded.cache.key, dataset)
    store = RunStore(run.path, heads_key, log=log, folds=len(dataset.folds), subfolder=label)
    heads = [store.load(key, fingerprint, seed, fold)
             for fold in range(len(dataset.folds)) for seed in seeds]
    if saved_key not in (None, heads_key) or any(head is None for head in heads):
        raise PoolkitError(f"run directory '{run.path}' does not hold every head of {key} under "
                           "the run's settings now (its data, model or settings changed since, "
                           "or the run did not finish); run the comparison again")
    epochs = final_epochs([head.best_epoch for head in heads])
    everything = np.arange(len(dataset.labels))
    task = HeadTask(dataset.labels, {"train": everything, "validation": everything[:0],
                                     "test": everything}, dataset.num_labels,
                    replace(config.head, max_epochs=epochs), encoded.device, final=True)
    if fs.trainable:
        kind = TrainablePoolerHeads(encoded.cache, config.pooler_timeout)
        head = next(iter(kind.train(task, [(fs, seeds[:1])])))
    else:
        features = pool(replace(encoded, sets={key: fs}), progress=config.progress,
                        timeout=config.pooler_timeout)
        if key in features.failures:
            raise PoolkitError(f"{key}: {features.failures[key]}")
        head = train_heads(features.arrays, task, seeds[:1])[0]
    if isinstance(head, FailedHead):
        raise PoolkitError(f"{key}: {head.reason}")
    head.fold = "final"
    store.save(head, fingerprint)
    log(f"final head of {key}: trained on all {len(everything)} items for {epochs} epochs "
        f"(the median best epoch of its {len(heads)} heads), saved in {store.folder}")
    return head, fs


def feature_set(poolers, encoder, key: str, config):
    """The :class:`~poolkit.pooling.features.FeatureSet` ``key`` (a frozen or ``-ft`` id) of the
    run's poolers on ``encoder``, its pooler set up; a pooler that fails now is one line."""
    name = key.split("@", 1)[0]
    selected = {name: poolers.selected[name]}
    specs, failed = setup_poolers(selected, encoder, 0, config.pooler_timeout)
    sets, failures = feature_sets(selected, specs, parse_layers(config.layers, encoder.num_layers),
                                  encoder.num_layers, failed=failed)
    tuned, tuned_failures = finetuned_sets(sets, failures, encoder.num_layers)
    sets, failures = {**sets, **tuned}, {**failures, **tuned_failures}
    if key not in sets or key in failures:
        raise PoolkitError(f"{key}: {failures.get(key, 'not a feature set the run makes now')}")
    return sets[key]


def final_epochs(best_epochs) -> int:
    """The final head's epochs: the median of the heads' best epochs, rounded half up
    (at least 1)."""
    return max(1, int(np.floor(np.median(np.asarray(best_epochs, dtype=float)) + 0.5)))


def _config(run: SavedRun, row, cache_dir, device) -> tuple:
    """``(RunConfig, model label, model name)`` of the run, for the set of summary row
    ``row``: its options as saved, relative paths taken from the run's working folder,
    its own model only."""
    options = run.settings["options"]
    cwd = Path(options.get("cwd", "."))

    def here(value):
        if value is None or Path(value).is_absolute():
            return value
        found = cwd / value
        return str(found) if found.exists() else value

    config = RunConfig.from_saved(
        options, out=run.path, poolers=tuple(run.recipe["poolers"]), progress=False,
        predictions=False, data=here(options.get("data")), test_data=here(options.get("test_data")),
        plugins_dir=here(options.get("plugins_dir")),
        cache_dir=cache_dir if cache_dir is not None else options.get("cache_dir"),
        device=device if device is not None else options.get("device"))
    models = config.model_list()
    label, name = None, models[0]
    if len(models) > 1:
        label = row["model"]
        name = models[model_labels(models).index(label)]
    return replace(config, model=name), label, name


def _poolers(run: SavedRun, config, pooler: str, force: bool, log) -> tuple:
    """The run's poolers, resolved now, and the fingerprint the run's heads carry for
    ``pooler``; a plugin whose source changed since is refused (or, with ``force``,
    used with a warning)."""
    try:
        poolers = resolve_poolers(config.poolers, config.plugins_dir,
                                  timeout=config.pooler_timeout)
    except PoolkitError as exc:
        raise PoolkitError(f"{exc} (the run in '{run.path}' used it)") from None
    recorded = run.recipe["poolers"][pooler]["source_sha256"]
    if poolers.fingerprints[pooler] != recorded:
        where = run.recipe["poolers"][pooler]["plugin"]
        if not force:
            raise PoolkitError(f"pooler '{pooler}' changed since the run (the source of plugin "
                               f"{where} differs from what its heads were trained with); run "
                               "the comparison again, or use --force to predict with the "
                               "plugin as it is now")
        log(f"warning: pooler '{pooler}' changed since the run (plugin {where}); --force: "
            "predicting with the plugin as it is now")
    return poolers, recorded


def _encoder(run: SavedRun, config, label, name):
    """The run's encoder, loaded under the name the run gave it (part of its cache key)
    from where that name pointed; a model whose files changed since is refused."""
    cwd = Path(run.settings["options"].get("cwd", "."))
    path = name
    if name is not None and not Path(str(name)).is_absolute() and (cwd / str(name)).exists():
        path = str(cwd / str(name))
    encoder = config.encoder(path)
    if name is not None:
        encoder.name = str(name)
    card = run.recipe["models"][label] if label is not None else run.recipe
    if encoder.identity()["model_fingerprint"] != card["model_fingerprint"]:
        raise PoolkitError(f"model '{encoder.name}' is not the one the run used (its config or "
                           "weight files changed since); predict with the model the run used, "
                           "or run the comparison again")
    return encoder


def _frozen_model(encoder, fs, head, num_labels: int, device: str, timeout):
    """The frozen encoder, ``fs``'s pooler and the final ``head`` as one
    :class:`~poolkit.heads.finetune.FineTuneModel` in eval mode: a fixed pooler's
    standardization folded into the head (``W' = W / σ``, ``b' = b − W'·μ``); a trainable
    pooler's module and head loaded, its token states standardized before it."""
    import torch

    from poolkit.heads.finetune import build_model

    model = build_model(encoder, fs, num_labels, seed=0, device=device, timeout=timeout)
    w = {k: v.double() for k, v in head.weights.items()}
    with torch.no_grad():
        if fs.trainable:
            model.pooler_module.load_state_dict({k[len("pooler."):]: v for k, v in
                                                 head.weights.items() if k.startswith("pooler.")})
            model.classifier.weight.copy_(w["head.weight"])
            model.classifier.bias.copy_(w["head.bias"])
            model.standardize = [(w[f"shift.{layer}"].float().to(device),
                                  w[f"scale.{layer}"].float().to(device)) for layer in fs.layers]
        else:
            weight, bias = fold_standardization(w["weight"], w["bias"], w["shift"], w["scale"])
            model.classifier.weight.copy_(weight)
            model.classifier.bias.copy_(bias)
    return model.eval()


def fold_standardization(weight, bias, shift, scale) -> tuple:
    """A linear head on standardized inputs, ``W (x − μ) / σ + b``, as one on the raw
    inputs: ``(W / σ, b − (W / σ) · μ)``."""
    folded = weight / scale
    return folded, bias - folded @ shift


def _finetuned_model(run: SavedRun, config, poolers, encoder, key: str, label, device, log):
    """A fine-tuned set's model: the one the run kept of fold 1 (first seed) with
    ``--save-models``."""
    from safetensors import safe_open

    from poolkit.heads.finetune import build_model

    store = RunStore(run.path, "", folds=run.settings.get("folds", 1), subfolder=label)
    seed = config.seed_list()[0]
    path = store.models / store._path(key, seed, 0).with_suffix(".safetensors").name
    if not path.is_file():
        raise PoolkitError(f"{key}: a fine-tuned set predicts with its fine-tuned model, which "
                           f"the run did not keep ({path.name} is not in '{run.path}'); run the "
                           "comparison again with --save-models")
    model = build_model(encoder, feature_set(poolers, encoder, key, config), len(run.labels),
                        seed=0, device=device, timeout=config.pooler_timeout)
    with safe_open(str(path), framework="pt") as saved:
        state = {name: saved.get_tensor(name) for name in saved.keys()}
    model.load_state_dict(state)
    log(f"{key}: the fine-tuned model the run kept of fold 1 (seed {seed}), trained on that "
        f"fold's training part ({path})")
    return model.eval()
