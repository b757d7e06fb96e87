"""--finetune: the encoder, a pooler and a linear head trained end to end.

Parity with Hugging Face (``BertForSequenceClassification``'s logits and loss,
``torch.optim.AdamW`` with the ``Trainer``'s schedule and clipping), gradient
accumulation, the run with frozen and fine-tuned rows side by side, and resume
after a kill.
"""

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import invoke, plugin_pooler, write_rows

from poolkit.encoding.model import load_encoder
from poolkit.heads.base import FineTuneConfig
from poolkit.heads.finetune import build_model, lr_factor, optimizer_for, train_step
from poolkit.pooling.features import FeatureSet

TEXTS = ["the movie was good", "awful plot", "a very very dull film and a boring story",
         "loved it", "it was not fun"]
LABELS = np.array([0, 1, 2, 0, 1])


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return load_encoder(str(tiny_model_dir))


def feature_set(name, dim=32):
    return FeatureSet(name, plugin_pooler(name), (2,), False, dim, finetuned=True)


def inputs(encoder, texts=TEXTS):
    batch = encoder.tokenizer(texts, padding=True, return_tensors="pt",
                              return_token_type_ids=False)
    return batch["input_ids"], batch["attention_mask"]


def hf_classifier(tiny_model_dir, ours):
    """``BertForSequenceClassification`` from the same checkpoint, with our head's weights."""
    from transformers import BertForSequenceClassification

    hf = BertForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=3).eval()
    with torch.no_grad():
        hf.classifier.weight.copy_(ours.classifier.weight)
        hf.classifier.bias.copy_(ours.classifier.bias)
    return hf


def test_bert_pooler_model_gives_bert_for_sequence_classification_logits_and_loss(
        encoder, tiny_model_dir):
    ours = build_model(encoder, feature_set("bert_pooler"), 3, seed=1).eval()
    hf = hf_classifier(tiny_model_dir, ours)
    ids, mask = inputs(encoder)
    with torch.no_grad():
        logits = ours(ids, mask)
        expected = hf(input_ids=ids, attention_mask=mask, labels=torch.from_numpy(LABELS))
        first_token = hf.classifier(hf.bert(input_ids=ids, attention_mask=mask)
                                    .last_hidden_state[:, 0])
    torch.testing.assert_close(logits, expected.logits, rtol=0, atol=1e-6)
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(LABELS))
    torch.testing.assert_close(loss, expected.loss, rtol=0, atol=1e-6)
    # the classifier reads pooler_output, which is not the [CLS] state
    assert (first_token - expected.logits).abs().max() > 1e-3


def test_cls_model_gives_a_first_token_head(encoder, tiny_model_dir):
    ours = build_model(encoder, feature_set("cls"), 3, seed=1).eval()
    hf = hf_classifier(tiny_model_dir, ours)
    ids, mask = inputs(encoder)
    with torch.no_grad():
        state = hf.bert(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        torch.testing.assert_close(ours(ids, mask), hf.classifier(state), rtol=0, atol=1e-6)
        pooled = hf(input_ids=ids, attention_mask=mask).logits
    assert (ours(ids, mask) - pooled).abs().max() > 1e-3


def test_bert_pooler_trains_the_models_own_pooler_dense(encoder):
    model = build_model(encoder, feature_set("bert_pooler"), 3, seed=1)
    logits = model(*inputs(encoder))
    torch.nn.functional.cross_entropy(logits, torch.from_numpy(LABELS)).backward()
    grad = model.encoder.pooler.dense.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_a_trainable_pooler_trains_its_module_and_a_combining_one_reads_its_layers(encoder):
    attention = FeatureSet("attention", plugin_pooler("attention"), (2,), False, 32, True,
                           finetuned=True)
    model = build_model(encoder, attention, 3, seed=1)
    optimizer = optimizer_for(model, 2e-5, 1e-3, 0.01)
    module = {id(p) for p in model.pooler_module.parameters()}
    assert module and all(group["lr"] == 1e-3 for group in optimizer.param_groups
                          if module & {id(p) for p in group["params"]})
    torch.nn.functional.cross_entropy(model(*inputs(encoder)), torch.from_numpy(LABELS)).backward()
    assert all(p.grad is not None for p in model.pooler_module.parameters())

    both = FeatureSet("first_last_avg", plugin_pooler("first_last_avg"), (1, 2), True, 32,
                      finetuned=True)
    model = build_model(encoder, both, 3, seed=1).eval()
    ids, mask = inputs(encoder)
    with torch.no_grad():
        states = model.encoder(input_ids=ids, attention_mask=mask,
                               output_hidden_states=True).hidden_states
        pooled = plugin_pooler("first_last_avg").pool((states[1], states[2]), mask)
        torch.testing.assert_close(model(ids, mask), model.classifier(pooled), rtol=0, atol=1e-6)


def _checkpointed(encoder, tmp_path, job="cls@2-ft seed 0"):
    """A model after one step, its checkpoint saved, and the warnings of loading it."""
    from poolkit.heads.finetune import Checkpoints

    model = build_model(encoder, feature_set("cls"), 3, seed=1)
    optimizer = optimizer_for(model, 2e-5, 1e-3, 0.01)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    ids = [list(row[row > 0]) for row in inputs(encoder)[0].numpy()]
    train_step(model, optimizer, ids, np.arange(5), LABELS, 0, "cpu", FineTuneConfig(), 1.0)
    warnings = []
    saved = Checkpoints(tmp_path / "job.checkpoint.safetensors", "key", job, warnings.append)
    saved.save(model, None, optimizer, {"epoch": 1, "step": 1})
    return model, saved, warnings


def test_a_checkpoint_is_used_only_intact_by_its_own_job(encoder, tmp_path):
    """On 421099a an edited checkpoint, or another job's of the same run (seed 1's
    copied over seed 0's), was loaded and resumed from without a word."""
    from poolkit.heads.finetune import Checkpoints

    model, saved, warnings = _checkpointed(encoder, tmp_path)
    tensors, record = saved.load(model)
    assert record["epoch"] == 1 and warnings == []
    path = saved.path
    other = Checkpoints(path, "key", "cls@2-ft seed 1", warnings.append)
    assert other.load(model) is None and "another job's (cls@2-ft seed 0)" in warnings[-1]
    assert Checkpoints(path, "other run", saved.job, warnings.append).load(model) is None

    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # one weight's byte
    path.write_bytes(bytes(data))
    assert saved.load(model) is None and "checksum does not hold" in warnings[-1]
    path.write_bytes(bytes(data[: len(data) // 2]))
    assert saved.load(model) is None and "cannot be read" in warnings[-1]
    assert all(str(path) in w for w in warnings)
    assert "starting cls@2-ft seed 0 again" in warnings[-1]

    model, saved, warnings = _checkpointed(encoder, tmp_path)
    mean = build_model(encoder, FeatureSet("attention", plugin_pooler("attention"), (2,), False,
                                           32, True, finetuned=True), 3, seed=1)
    assert saved.load(mean) is None and "do not fit the model" in warnings[-1]


def test_a_kill_while_a_checkpoint_is_written_leaves_the_last_one_whole(encoder, tmp_path,
                                                                       monkeypatch):
    """A kill between the new checkpoint's bytes and its rename (what SIGKILL leaves:
    the temp file half or wholly written, never renamed) keeps the last checkpoint whole
    and usable: its epoch is resumed from, and the stray temp file is ignored."""
    import poolkit.files

    model, saved, warnings = _checkpointed(encoder, tmp_path)
    optimizer = optimizer_for(model, 2e-5, 1e-3, 0.01)
    killed = []

    def killed_before_rename(source, target):
        killed.append(Path(source).stat().st_size)
        raise KeyboardInterrupt  # as far as the file system knows, the process is gone

    monkeypatch.setattr(poolkit.files.os, "replace", killed_before_rename)
    monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: None)  # no clean-up
    with pytest.raises(KeyboardInterrupt):
        saved.save(model, None, optimizer, {"epoch": 2, "step": 2})
    monkeypatch.undo()
    assert killed and len(list(tmp_path.glob(".job.checkpoint.safetensors.*.tmp"))) == 1
    tensors, record = saved.load(model)
    assert record["epoch"] == 1 and warnings == []


def test_steps_move_the_weights_as_torch_adamw_with_the_trainers_schedule(encoder):
    """Two steps of train_step against torch.optim.AdamW, the Trainer's decay groups,
    get_linear_schedule_with_warmup and clip_grad_norm_, written out independently."""
    from transformers import get_linear_schedule_with_warmup
    from transformers.trainer_pt_utils import get_parameter_names

    ours = build_model(encoder, feature_set("mean"), 3, seed=2).eval()
    reference = copy.deepcopy(ours)
    settings = FineTuneConfig(max_grad_norm=0.5)
    encoder_lr, head_lr, decay = 1e-3, 1e-2, 0.1
    patterns = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]
    decayed = set(get_parameter_names(reference, [torch.nn.LayerNorm], patterns))
    groups = [{"params": [p for n, p in reference.named_parameters()
                          if n.startswith("encoder.") == enc and (n in decayed) == d],
               "lr": encoder_lr if enc else head_lr, "weight_decay": decay if d else 0.0}
              for enc in (True, False) for d in (True, False)]
    optimizer = torch.optim.AdamW(groups)
    schedule = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=1, num_training_steps=3)
    ids, mask = inputs(encoder)
    labels = torch.from_numpy(LABELS)
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(reference(ids, mask), labels).backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
        optimizer.step()
        schedule.step()

    mine = optimizer_for(ours, encoder_lr, head_lr, decay)
    token_ids = [row[m.bool()].numpy() for row, m in zip(ids, mask)]
    for step in range(3):
        train_step(ours, mine, token_ids, np.arange(len(TEXTS)), LABELS, 0, "cpu", settings,
                   lr_factor(step, 1, 3))
    before = dict(build_model(encoder, feature_set("mean"), 3, seed=2).named_parameters())
    moved = 0
    for (name, got), want in zip(ours.named_parameters(), reference.parameters()):
        torch.testing.assert_close(got, want, rtol=0, atol=2e-7, msg=name)
        moved += not torch.equal(got, before[name])
    assert moved > 10


def test_gradient_accumulation_equals_one_large_batch(encoder):
    one = build_model(encoder, feature_set("max"), 3, seed=3).eval()
    two = copy.deepcopy(one)
    ids, mask = inputs(encoder)
    token_ids = [row[m.bool()].numpy() for row, m in zip(ids, mask)]
    for model, accumulation in ((one, 1), (two, 2)):
        optimizer = optimizer_for(model, 1e-3, 1e-2, 0.01)
        train_step(model, optimizer, token_ids, np.arange(5), LABELS, 0, "cpu",
                   FineTuneConfig(accumulation=accumulation), 1.0)
    for (name, a), b in zip(one.named_parameters(), two.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


@pytest.fixture
def data_csv(tmp_path):
    path = tmp_path / "reviews.csv"
    write_rows(path, 160)
    return path


@pytest.mark.slow
def test_run_shows_frozen_and_finetuned_side_by_side(data_csv, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    args = ["run", "--data", data_csv, "--model", tiny_model_dir, "--poolers",
            "cls,bert_pooler,mean,max", "--seeds", "2", "--folds", "1", "--finetune",
            "--finetune-epochs", "2", "--max-train-texts", "60", "--out", out, "--save-models"]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert "Frozen or fine-tuned" in result.output
    results = pd.read_csv(out / "results.csv")
    assert sorted(results.groupby("encoder").size().items()) == [("finetuned", 8), ("frozen", 8)]
    settings = json.loads((out / "settings.json").read_text())
    assert settings["split_sizes"]["train"] == 60
    pairs = pd.read_csv(out / "pairs.csv")
    tuned = [f"{name}@2-ft" for name in ("cls", "bert_pooler", "mean", "max")]
    assert sum(a in tuned and b in tuned for a, b in zip(pairs["a"], pairs["b"])) == 6
    assert len(pairs) == 28  # 8 feature sets
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["encoder"]) == {"frozen", "finetuned"}
    from safetensors import safe_open

    models = sorted((out / "models").iterdir())
    assert len(models) == 8
    with safe_open(str(models[0]), framework="pt") as saved:
        assert "classifier.weight" in saved.keys()
        assert "encoder.pooler.dense.weight" in saved.keys()
    assert not list((out / "heads").glob("*.checkpoint.safetensors"))
    from poolkit.winner.plot import _row_labels, plot_run, read_summary

    assert "max (fine-tuned)" in _row_labels(read_summary(out))
    assert [path.name for path in plot_run(out, formats=("png",))] == ["accuracy.png"]
    exported = invoke(["export", out, "--format", "md"])
    assert exported.exit_code == 0 and "finetuned" in exported.output
    again = invoke(args)
    assert again.exit_code == 0 and "fine-tuning" not in again.output
    assert "reusing 16 finished heads" in again.output
    # a saved model changed since (on c656795 a run with other settings wrote over it)
    # stops the run before any work; a file of the user's own beside them is left alone
    models[0].write_bytes(b"the user's own weights")
    (out / "models" / "notes.txt").write_text("mine")
    edited = invoke(args)
    assert edited.exit_code == 1 and f"'models/{models[0].name}' is not a model poolkit" \
        in edited.output
    assert models[0].read_bytes() == b"the user's own weights"
    assert (out / "models" / "notes.txt").read_text() == "mine"


DETACHED = """
from poolkit import Pooler, hookimpl


class Detached(Pooler):
    name = "detached_cls"

    def pool(self, hidden, mask):
        return hidden[:, 0].detach()


@hookimpl
def register_poolers(register):
    register(Detached())
"""


@pytest.mark.slow
def test_a_pooler_detached_from_the_encoder_fails_alone_under_finetune(data_csv, tiny_model_dir,
                                                                      tmp_path):
    """Its head would train while the encoder got no gradient: a frozen result
    labelled ``finetuned``. It fails alone (exit 3); its frozen row and cls are kept."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "detached.py").write_text(DETACHED)
    out = tmp_path / "run"
    result = invoke(["run", "--data", data_csv, "--model", tiny_model_dir, "--plugins-dir",
                     plugins, "--poolers", "cls,detached_cls", "--seeds", "1", "--folds", "1",
                     "--finetune", "--finetune-epochs", "1", "--max-train-texts", "40",
                     "--out", out])
    assert result.exit_code == 3, result.output
    assert "detached_cls" in result.output and "carried no gradient to the encoder" in result.output
    summary = pd.read_csv(out / "summary.csv", keep_default_na=False).set_index(
        ["pooler", "encoder"])["status"]
    assert summary[("detached_cls", "finetuned")].startswith("failed: under --finetune")
    assert summary[("detached_cls", "frozen")] == "ok"
    assert summary[("cls", "finetuned")] == "ok"


@pytest.mark.slow
def test_fine_tuning_that_diverges_fails_with_the_rates_named(data_csv, tiny_model_dir, tmp_path):
    """At --encoder-lr 1e9 the loss is NaN after the first step; on 421099a the run
    exited 0 with a 'finetuned' row of the untrained model (best epoch 0)."""
    out = tmp_path / "run"
    result = invoke(["run", "--data", data_csv, "--model", tiny_model_dir, "--poolers", "cls",
                     "--seeds", "1", "--folds", "1", "--finetune", "--finetune-epochs", "2",
                     "--encoder-lr", "1e9", "--max-train-texts", "40", "--out", out])
    assert result.exit_code == 3, result.output
    assert "fine-tuning diverged" in result.output and "--encoder-lr 1e+09" in result.output
    summary = pd.read_csv(out / "summary.csv").set_index("encoder")["status"]
    assert summary["finetuned"].startswith("failed: fine-tuning diverged")
    assert summary["frozen"] == "ok"


def test_finetune_refuses_other_protocols_and_save_models_alone(data_csv, tiny_model_dir):
    result = invoke(["run", "--data", data_csv, "--model", tiny_model_dir, "--finetune",
                     "--protocol", "mteb"])
    assert result.exit_code != 0 and "--finetune" in result.output
    result = invoke(["run", "--data", data_csv, "--model", tiny_model_dir, "--save-models"])
    assert result.exit_code != 0 and "add --finetune" in result.output
    assert "Traceback" not in result.output


RUN = """
import sys
import poolkit
from poolkit.heads.base import FineTuneConfig
poolkit.run(sys.argv[1], model=sys.argv[2], poolers=["mean", "bert_pooler"], seeds=1, folds=2,
            finetune=FineTuneConfig(epochs=8, patience=8, batch_size=16), out=sys.argv[3],
            cache_dir=sys.argv[4], log=print)
"""


@pytest.mark.slow
def test_a_run_killed_while_finetuning_resumes_to_the_same_results(tmp_path, tiny_model_dir):
    data = tmp_path / "reviews.csv"
    write_rows(data, 200)

    def command(out):
        return [sys.executable, "-c", RUN, str(data), str(tiny_model_dir), str(out),
                str(tmp_path / "cache")]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = subprocess.run(command(tmp_path / "whole"), capture_output=True, text=True,
                           timeout=300, env=env)
    assert whole.returncode == 0, whole.stderr

    killed = tmp_path / "killed"
    process = subprocess.Popen(command(killed), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=env)
    def unfinished():  # checkpoints of jobs whose head is not saved yet
        heads = killed / "heads"
        found = sorted(heads.glob("*.checkpoint.safetensors")) if heads.is_dir() else []
        return [c for c in found
                if not c.with_name(c.name.replace(".checkpoint.safetensors", ".npy")).exists()]

    def ready():  # a later job's checkpoint while one fine-tuned head is finished and saved
        return unfinished() and list((killed / "heads").glob("*-ft-*.npy"))

    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if ready():
            # freeze the run before checking again: a job can finish its head (and drop its
            # checkpoint) in the moment between the look and the kill
            process.send_signal(signal.SIGSTOP)
            if ready():
                break
            process.send_signal(signal.SIGCONT)
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    left = unfinished()
    assert left, "the run ended before it was killed"
    checkpoint = left[0]
    from safetensors import safe_open  # a checkpoint is tensors, no pickle

    with safe_open(str(checkpoint), framework="pt") as saved:
        assert json.loads(saved.metadata()["record"])["epoch"] >= 1

    resumed = subprocess.run(command(killed), capture_output=True, text=True, timeout=300,
                             env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and "after epoch" in resumed.stdout
    assert (killed / "results.csv").read_bytes() == (tmp_path / "whole" / "results.csv").read_bytes()
    assert not list((killed / "heads").glob("*.checkpoint.safetensors"))
