"""Fine-tuning: the encoder, a pooler and a linear head trained end to end.

The head kind of ``--finetune``. Per feature set × seed it does what
``BertForSequenceClassification`` does with the pooler swapped: a fresh copy of
the pretrained encoder, the pooler, ``Dropout`` and ``nn.Linear(D, num_labels)``
(row *i* is label id *i*), trained with cross-entropy and ``torch.optim.AdamW``
(one learning rate for the encoder, another for the pooler's module and the head;
no weight decay on biases and LayerNorm weights, as Hugging Face's ``Trainer``),
a linear warm-up and decay, gradient clipping and gradient accumulation, on
length-bucketed batches; the best epoch by validation loss is kept and scored.

The pooler plugins are the objects of the frozen run. A copy of the pooler is
set up against the encoder being trained (:class:`TrainingEncoder`), whose
``weights()`` are its live parameters: ``bert_pooler`` so trains the model's own
``pooler.dense``; a fixed pooler is differentiable as written; a trainable
pooler trains its ``module``.

A job's randomness depends only on its feature set, seed and epoch, and each
epoch ends in a checkpoint (safetensors, no pickle) in the run directory, so a
killed run resumes at the next epoch and gives the results an uninterrupted
run gives.
"""

import copy
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from poolkit.encoding.model import _load_model
from poolkit.encoding.tokenization import segments, tokenize
from poolkit.errors import NEEDS_PAIRS, PluginFailure, one_line
from poolkit.files import tensors_sha256, write_tensors
from poolkit.heads.base import (
    MIN_DELTA,
    FailedHead,
    FineTuneConfig,
    HeadTask,
    TrainedHead,
    head_seed,
)
from poolkit.pooling.isolation import DEFAULT_TIMEOUT, plugin_code

#: Parameters kept out of weight decay, besides those of ``nn.LayerNorm`` modules: names
#: (lowercased) matching this, as Hugging Face's ``Trainer.get_decay_parameter_names``.
NO_DECAY = r"bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)"


class TrainingEncoder:
    """What a pooler's ``setup`` gets in fine-tuning: the run's
    :class:`~poolkit.encoding.model.Encoder`, except that ``model`` is the model being
    trained and ``weights(prefix)`` returns its live parameters (so a pooler that
    uses them as given trains them)."""

    def __init__(self, encoder, model):
        self._encoder, self.model = encoder, model

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def weights(self, prefix: str):
        module = self.model
        for part in prefix.split("."):
            module = getattr(module, part, None)
            if module is None:
                return None
        return dict(module.named_parameters())


class FineTuneModel(torch.nn.Module):
    """Encoder → pooler → ``Dropout`` → ``nn.Linear(D, num_labels)``; ``forward``
    returns the logits (float32). ``pooler`` is a set-up copy of the plugin's
    pooler; a trainable one's ``module`` is ``pooler_module``."""

    def __init__(self, encoder_model, feature_set, pooler, num_labels: int, dropout: float,
                 timeout=DEFAULT_TIMEOUT, pooler_module=None):
        super().__init__()
        self.encoder = encoder_model
        self.pooler_module = pooler_module
        self.dropout = torch.nn.Dropout(dropout)
        self.classifier = torch.nn.Linear(feature_set.dim, num_labels)
        self.pooler, self.timeout = pooler, timeout
        self.layers, self.combines = tuple(feature_set.layers), feature_set.combines
        self.segments = feature_set.segments
        self.last = encoder_model.config.num_hidden_layers
        #: the encoder takes pairs' segment ids as ``token_type_ids`` (BERT)
        self.token_types = False
        #: ``[(shift, scale)]`` per layer: real tokens' states standardized before the
        #: pooler, padding zero (a final trainable pooler's, :mod:`poolkit.winner.final`)
        self.standardize = None

    def forward(self, input_ids, attention_mask, segments=None):
        """Logits of a batch; ``segments`` ``(batch, seq)`` for pairs of texts (the
        encoder's ``token_type_ids`` where it takes them, and the pooler's if it asks)."""
        if self.segments and segments is None:
            raise PluginFailure(NEEDS_PAIRS)
        every = self.layers != (self.last,)
        extra = {"token_type_ids": segments} if self.token_types and segments is not None else {}
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                           output_hidden_states=every, **extra)
        states = [out.hidden_states[i] for i in self.layers] if every else [out.last_hidden_state]
        if self.standardize is not None:
            real = attention_mask.unsqueeze(-1).to(states[0].dtype)
            states = [(s - shift) / scale * real
                      for s, (shift, scale) in zip(states, self.standardize)]
        hidden = tuple(states) if self.combines else states[0]
        pair = (segments,) if self.segments else ()
        with plugin_code(self.timeout):
            if self.pooler_module is not None:
                pooled = self.pooler_module(hidden, attention_mask, *pair)
            else:
                pooled = self.pooler.pool(hidden, attention_mask, *pair)
        return self.classifier(self.dropout(pooled.float())).float()


def build_model(encoder, feature_set, num_labels: int, seed: int, device: str = "cpu",
                timeout=DEFAULT_TIMEOUT) -> FineTuneModel:
    """A :class:`FineTuneModel` from the pretrained checkpoint: the encoder's weights
    fresh from disk, the pooler set up against it, and the head (and a trainable
    pooler's module) initialized under ``seed`` as Hugging Face initializes a
    classifier (normal, std ``initializer_range``; zero bias). Raises
    :class:`~poolkit.errors.PluginFailure` if the pooler fails."""
    model = _load_model(encoder).to(device)
    settings = model.config
    dropout = getattr(settings, "classifier_dropout", None)
    if dropout is None:
        dropout = getattr(settings, "hidden_dropout_prob", 0.1)
    with plugin_code(timeout):
        pooler = copy.deepcopy(feature_set.pooler)
        pooler.setup(TrainingEncoder(encoder, model))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = None
        if feature_set.trainable:
            with plugin_code(timeout):
                module = pooler.module(encoder.hidden_size)
        built = FineTuneModel(model, feature_set, pooler, num_labels, dropout, timeout, module)
        built.token_types = encoder.token_types
        with torch.no_grad():
            built.classifier.weight.normal_(0.0, getattr(settings, "initializer_range", 0.02))
            built.classifier.bias.zero_()
    return built.to(device)


def optimizer_for(model: FineTuneModel, encoder_lr: float, head_lr: float, weight_decay: float):
    """``torch.optim.AdamW`` over four groups: encoder / pooler module and head, each
    with and without weight decay. Each group's ``initial_lr`` is its peak rate."""
    decayed = {f"{prefix}.{name}" if prefix else name
               for prefix, module in model.named_modules()
               if not isinstance(module, torch.nn.LayerNorm)
               for name, _ in module.named_parameters(recurse=False)
               if not re.search(NO_DECAY, f"{prefix}.{name}".lower())}
    groups = []
    for lr, is_encoder in ((encoder_lr, True), (head_lr, False)):
        for decay in (True, False):
            params = [p for name, p in model.named_parameters()
                      if name.startswith("encoder.") == is_encoder and p.requires_grad
                      and (name in decayed) == decay]
            if params:
                groups.append({"params": params, "lr": lr, "initial_lr": lr,
                               "weight_decay": weight_decay if decay else 0.0})
    return torch.optim.AdamW(groups)


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Hugging Face's ``get_linear_schedule_with_warmup`` at optimizer step ``step`` (0-based)."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def train_batches(lengths: np.ndarray, size: int, rng) -> list:
    """Length-bucketed batches (positions into ``lengths``): shuffled, sorted by
    length within pools of 50 batches, cut into batches, the batches shuffled."""
    order = rng.permutation(len(lengths))
    pool = size * 50
    batches = []
    for start in range(0, len(order), pool):
        part = order[start : start + pool]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i : i + size] for i in range(0, len(part), size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(ids, rows, pad_id: int, device: str):
    """``(input_ids, attention_mask, segments)`` int64 tensors of the texts ``rows``
    (a :class:`~poolkit.encoding.tokenization.TokenIds`), padded to the longest; ``segments``
    is ``None`` for single texts (see :func:`~poolkit.encoding.tokenization.segments`)."""
    rows = np.asarray(rows)
    lengths = np.array([len(ids[i]) for i in rows])
    width = int(lengths.max())
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    for r, i in enumerate(rows):
        input_ids[r, : lengths[r]] = ids[i]
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    pairs = getattr(ids, "pair_starts", None)
    segs = segments(pairs[rows], lengths, width).to(device) if pairs is not None else None
    return torch.from_numpy(input_ids).to(device), torch.from_numpy(mask).to(device), segs


def _autocast(device: str, precision: str):
    on_cuda = device.startswith("cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast("cuda", dtype=dtype or torch.bfloat16,
                          enabled=on_cuda and dtype is not None)


def predict(model, ids, rows, pad_id, device, batch_size, precision="bf16"):
    """Logits ``(len(rows), C)`` float32 on the CPU, in ``rows`` order (batched by length)."""
    model.eval()
    lengths = np.array([len(ids[i]) for i in rows])
    order = np.argsort(lengths, kind="stable")
    out = [None] * len(rows)
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            part = order[start : start + batch_size]
            with _autocast(device, precision):
                logits = model(*collate(ids, rows[part], pad_id, device))
            for position, row in zip(part, logits.float().cpu()):
                out[position] = row
    return torch.stack(out)


def train_step(model, optimizer, ids, rows, labels, pad_id, device, settings: FineTuneConfig,
               factor: float, precision="bf16") -> float:
    """One optimizer step on the texts ``rows`` (in ``settings.accumulation``
    micro-batches): mean cross-entropy over ``rows``, gradients clipped to
    ``max_grad_norm``, every group's rate its peak × ``factor``. Returns the loss."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    micro = math.ceil(len(rows) / settings.accumulation)
    for start in range(0, len(rows), micro):
        part = rows[start : start + micro]
        with _autocast(device, precision):
            logits = model(*collate(ids, part, pad_id, device))
        target = torch.from_numpy(labels[part]).to(device)
        loss = F.cross_entropy(logits.float(), target, reduction="sum") / len(rows)
        loss.backward()
        total += float(loss.detach())
    torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
    optimizer.step()
    return total


NO_GRADIENT = ("under --finetune its output carried no gradient to the encoder (it is "
               "detached from the token states, or not differentiable): the encoder would "
               "not be fine-tuned")


def _encoder_has_gradient(model) -> bool:
    """Whether the last backward pass reached the encoder: some encoder weight has a
    non-zero gradient. A pooler returning ``hidden[:, 0].detach()`` trains only the
    head, and its row would be a frozen result labelled ``finetuned``."""
    return any(p.grad is not None and bool(p.grad.ne(0).any())
               for p in model.encoder.parameters())


class Diverged(RuntimeError):
    """Fine-tuning's loss became NaN or infinite: every later number would be noise."""


def _refuse_divergence(loss: float, what: str, epoch: int, settings, config) -> None:
    if not math.isfinite(loss):
        raise Diverged(f"fine-tuning diverged: the {what} of epoch {epoch} is {loss} "
                       f"(--encoder-lr {settings.encoder_lr:g}, --lr {config.learning_rate:g}: "
                       "give smaller rates)")


class Checkpoints:
    """A job's end-of-epoch checkpoint: one safetensors file of the model, the best
    epoch's weights (when not the last), the optimizer's state, and a JSON record
    (epoch, steps, validation losses, the heads key, the job, and the sha256 of the
    tensors) in its metadata. A checkpoint of another job or run, damaged, edited or
    not fitting the model is never used: the job starts again, with a warning."""

    def __init__(self, path: Path | None, key: str, job: str = "", log=lambda message: None):
        self.path, self.key, self.job, self.log = path, key, job, log

    def save(self, model, best_state, optimizer, record: dict) -> None:
        if self.path is None:
            return

        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        if best_state is not None:
            tensors.update({f"best.{k}": v for k, v in best_state.items()})
        for index, state in optimizer.state_dict()["state"].items():
            for name, value in state.items():
                tensors[f"optimizer.{index}.{name}"] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {**record, "key": self.key, "job": self.job, "sha256": tensors_sha256(tensors)}
        write_tensors(self.path, tensors, {"record": json.dumps(record)})

    def load(self, model):
        """``(tensors, record)`` of this job's checkpoint, intact and fitting ``model``,
        else ``None`` (a warning says why one on disk was not used)."""
        if self.path is None or not self.path.is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="pt") as handle:
                record = json.loads(handle.metadata()["record"])
                tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        except Exception as exc:
            return self._unused(f"it cannot be read ({one_line(exc)})")
        if record.get("key") != self.key or record.get("job") != self.job:
            return self._unused(f"it is another job's ({record.get('job') or 'unnamed'})")
        if record.get("sha256") != tensors_sha256(tensors):
            return self._unused("its checksum does not hold: it is damaged or was edited")
        shapes = {f"model.{k}": v.shape for k, v in model.state_dict().items()}
        if {k: v.shape for k, v in tensors.items() if k.startswith("model.")} != shapes:
            return self._unused("its weights do not fit the model")
        return tensors, record

    def _unused(self, why: str):
        self.log(f"warning: checkpoint {self.path} not used: {why}; starting {self.job} again")
        return None

    def remove(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _restore(model, optimizer, tensors: dict):
    """Load a checkpoint's model and optimizer state; returns the best epoch's weights
    (``None``: the model's own)."""
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
    state = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    saved = optimizer.state_dict()
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
    return {k: v.to(next(model.parameters()).device) for k, v in best.items()} if best else None


def finetune(encoder, ids, feature_set, task: HeadTask, seed: int, settings: FineTuneConfig,
             pad_id: int, timeout=DEFAULT_TIMEOUT, checkpoints: Checkpoints | None = None,
             precision: str = "bf16", save_model=None, log=lambda message: None) -> TrainedHead:
    """Fine-tune ``feature_set``'s pooler with the encoder and a head on ``task``'s
    fold for ``seed``; returns the :class:`~poolkit.heads.base.TrainedHead` of the best
    epoch by validation loss, scored on the fold's test items. ``ids`` are the
    token ids of every text. ``save_model(state_dict)`` is given the best weights."""
    device, config = task.device, task.config
    own = head_seed(seed, feature_set.id)
    train, val, test = task.train, task.validation, task.test
    labels = np.asarray(task.labels, dtype=np.int64)
    lengths = np.array([len(ids[i]) for i in train])
    cuda = [torch.device(device).index or 0] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=cuda):
        model = build_model(encoder, feature_set, task.num_labels, own, device, timeout)
        optimizer = optimizer_for(model, settings.encoder_lr, config.learning_rate,
                                  config.weight_decay)
        record = {"epoch": 0, "step": 0, "best_epoch": 0, "best_loss": math.inf, "stale": 0}
        best_state = None
        saved = checkpoints.load(model) if checkpoints is not None else None
        if saved is not None:
            best_state = _restore(model, optimizer, saved[0])
            record = {k: saved[1][k] for k in record}
            log(f"resuming {feature_set.id} seed {seed} after epoch {record['epoch']} "
                f"(checkpoint {checkpoints.path})")
        epoch, began = record["epoch"], time.perf_counter()
        while epoch < settings.epochs and record["stale"] < settings.patience:
            epoch += 1
            if best_state is None:  # the model is the best so far: keep it in case
                before = {k: v.detach().clone() for k, v in model.state_dict().items()}
            _train_epoch(model, optimizer, ids, train, labels, lengths, own, epoch, record,
                         task, settings, pad_id, precision)
            logits = predict(model, ids, val, pad_id, device, 2 * settings.batch_size, precision)
            loss = float(F.cross_entropy(logits.double(), torch.from_numpy(labels[val])))
            _refuse_divergence(loss, "validation loss", epoch, settings, config)
            log(f"  epoch {epoch}/{settings.epochs}: validation loss {loss:.4f} "
                f"({time.perf_counter() - began:.0f}s)")
            record["epoch"] = epoch
            if loss < record["best_loss"] - MIN_DELTA:
                record.update(best_loss=loss, best_epoch=epoch, stale=0)
                best_state = None  # the model itself is the best so far
            else:
                if best_state is None:  # the weights before this epoch stay the best
                    best_state = before
                record["stale"] += 1
            before = None
            if checkpoints is not None and epoch < settings.epochs \
                    and record["stale"] < settings.patience:
                checkpoints.save(model, best_state, optimizer, record)
        if best_state is not None:
            model.load_state_dict(best_state)
        if save_model is not None:
            save_model(model.state_dict())
        logits = predict(model, ids, test, pad_id, device, 2 * settings.batch_size, precision)
    probabilities = torch.softmax(logits.double(), dim=-1).numpy()
    return TrainedHead(feature_set.id, seed, probabilities, record["best_epoch"], record["epoch"],
                       record["best_loss"], fold=task.fold)


def _train_epoch(model, optimizer, ids, train, labels, lengths, own: int, epoch: int,
                 record: dict, task: HeadTask, settings: FineTuneConfig, pad_id: int,
                 precision: str) -> None:
    """One epoch of optimizer steps over ``train``'s items, in length-sorted batches drawn
    for ``(own, epoch)``; ``record["step"]`` counts the steps (the learning rate's schedule
    and a resume follow it)."""
    step_size = settings.batch_size * settings.accumulation
    total_steps = math.ceil(len(train) / step_size) * settings.epochs
    warmup_steps = int(settings.warmup * total_steps)
    torch.manual_seed(own * 1000 + epoch)  # dropout: the same stream on resume
    model.train()
    for batch in train_batches(lengths, step_size, np.random.default_rng([own, epoch])):
        factor = lr_factor(record["step"], warmup_steps, total_steps)
        loss = train_step(model, optimizer, ids, train[batch], labels, pad_id, task.device,
                          settings, factor, precision)
        if record["step"] == 0 and not _encoder_has_gradient(model):
            raise PluginFailure(NO_GRADIENT)
        record["step"] += 1
        _refuse_divergence(loss, f"training loss at step {record['step']}", epoch,
                           settings, task.config)


class FineTunedHeads:
    """The :class:`~poolkit.heads.base.HeadKind` of ``--finetune``: the fine-tuned feature
    sets (:attr:`~poolkit.pooling.features.FeatureSet.finetuned`), each job as :func:`finetune`.
    ``store`` (a :class:`~poolkit.pipeline.runs.RunStore`) places checkpoints and, with
    ``save_models``, the fine-tuned weights in the run directory."""

    def __init__(self, encoder, texts, settings: FineTuneConfig, store=None,
                 timeout=DEFAULT_TIMEOUT, precision="bf16", save_models=False,
                 log=lambda message: None):
        self.encoder, self.texts, self.settings, self.store = encoder, texts, settings, store
        self.timeout, self.precision, self.save_models, self.log = (timeout, precision,
                                                                    save_models, log)
        self._ids = None

    def wants(self, feature_set) -> bool:
        return feature_set.finetuned

    def ids(self):
        if self._ids is None:
            self._ids = tokenize(self.encoder, self.texts)[0]
        return self._ids

    def train(self, task: HeadTask, jobs: list):
        pad_id = self.encoder.tokenizer.pad_token_id or 0
        self.encoder._model = None  # the frozen pass's model: one model in memory at a time
        for feature_set, seeds in jobs:
            fold = f", fold {task.fold + 1} of {task.folds}" if task.folds > 1 else ""
            for seed in seeds:
                self.log(f"fine-tuning the encoder with pooler '{feature_set.pooler_name}' "
                         f"(seed {seed}{fold}) on {len(task.train)} texts")
                where = self.store.checkpoint(feature_set.id, seed, task.fold) \
                    if self.store is not None else None
                checkpoints = Checkpoints(where, self.store.key if self.store else "",
                                          f"{feature_set.id} seed {seed}{fold}", self.log)
                save = None
                if self.save_models and self.store is not None:
                    save = self.store.model_saver(feature_set.id, seed, task.fold)
                try:
                    head = finetune(self.encoder, self.ids(), feature_set, task, seed,
                                    self.settings, pad_id, self.timeout, checkpoints,
                                    self.precision, save, self.log)
                except PluginFailure as exc:
                    yield FailedHead(feature_set.id, exc.reason)
                    break
                except Diverged as exc:
                    yield FailedHead(feature_set.id, str(exc))
                    break
                except RuntimeError as exc:  # e.g. a pooler that is not differentiable
                    yield FailedHead(feature_set.id, one_line(exc))
                    break
                yield head  # saved by the caller before the checkpoint goes
                checkpoints.remove()
