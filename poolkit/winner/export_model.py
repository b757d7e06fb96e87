"""A run's feature set as a model other libraries load (``poolkit export-model``).

The model is the set's :class:`~poolkit.winner.final.Classifier` (its final head, or a
fine-tuned set's kept model), written in a format that needs no poolkit:

- ``hf``: a ``transformers`` folder for ``AutoModelForSequenceClassification`` and
  ``pipeline("text-classification")``. Only where the set *is* that class: BERT's
  ``BertForSequenceClassification`` is its ``pooler_output`` (``tanh(dense([CLS]))``,
  poolkit's ``bert_pooler`` on the last layer), dropout and ``nn.Linear(H, C)``.
- ``sentence-transformers``: ``Transformer`` + ``Pooling(mode)`` + ``Dense`` (identity
  activation) holding the head, so ``SentenceTransformer(DIR).encode(texts)`` returns
  the logits; for the poolers ``Pooling`` computes as poolkit does (:data:`ST_MODES`),
  on the last layer.

Both carry the label names (``config.json``'s ``id2label``, or ``poolkit.json``: row *i*
of the head, logit *i*, is label id *i*), the tokenizer with the run's length limit, a
README naming the run, and ``poolkit.json`` (labels, set, run, max length).
"""

import json
from pathlib import Path

from poolkit.errors import PoolkitError
from poolkit.files import refuse_owned
from poolkit.winner.export import markdown_cell
from poolkit.winner.final import choose_set, load, read_run

#: poolkit pooler -> sentence-transformers ``Pooling`` mode computing the same on
#: right-padded batches (cls: the first token; weightedmean: real token i weighs i;
#: lasttoken: the last real token).
ST_MODES = {"cls": "cls", "mean": "mean", "max": "max",
            "mean_sqrt_len": "mean_sqrt_len_tokens", "weighted_mean": "weightedmean",
            "last_token": "lasttoken"}

#: ``--format`` -> what it writes.
FORMATS = {"hf": "a transformers folder (AutoModelForSequenceClassification, pipeline)",
           "sentence-transformers": "a SentenceTransformer folder whose encode() gives logits"}


def export_model(run_dir, set=None, out=None, fmt: str = "hf", *, cache_dir=None,
                 force: bool = False, trust_remote_code: bool = False,
                 log=lambda message: None) -> Path:
    """Write feature set ``set`` (default: the run's best) of ``run_dir`` as a ``fmt``
    model into the folder ``out`` (new, or empty; written whole or not at all);
    returns ``out``."""
    import os
    import shutil
    import tempfile

    if fmt not in FORMATS:
        raise PoolkitError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PoolkitError(f"-o '{out}' exists and is not an empty folder; name a new folder")
    refuse_owned(out, "-o")
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not os.access(existing, os.W_OK):  # said now, not after the final head is trained
        raise PoolkitError(f"-o '{out}': '{existing}' is not writable; name another folder")
    run = read_run(run_dir)
    set_id = choose_set(run, set, log)
    row = run.finished_sets()[set_id]
    models = run.settings.get("models")
    last = str(models[row["model"]]["num_layers"] if models else run.settings["num_layers"])
    pooler, on_last = row["pooler"], row["layer"] == last
    if fmt == "hf" and not (pooler == "bert_pooler" and on_last):
        raise PoolkitError(
            f"{set_id} is not a transformers class: only bert_pooler on a BERT's last layer "
            f"(layer {last}) is BertForSequenceClassification; use --format "
            f"sentence-transformers for the poolers it implements ({', '.join(ST_MODES)})")
    if fmt == "sentence-transformers" and not (pooler in ST_MODES and on_last):
        raise PoolkitError(f"{set_id}: sentence-transformers' Pooling implements "
                           f"{', '.join(ST_MODES)} on the last layer (layer {last}); this set is "
                           "not one of those")
    classifier = load(run_dir, set_id, cache_dir=cache_dir, device="cpu", force=force,
                      trust_remote_code=trust_remote_code, log=log)
    if fmt == "hf" and not _is_bert(classifier.model.encoder):
        raise PoolkitError(f"{set_id}: the model is not a BERT with a pooler; "
                           "BertForSequenceClassification needs one (use --format "
                           "sentence-transformers)")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        if fmt == "hf":
            _write_hf(classifier, partial)
        else:
            _write_sentence_transformers(classifier, partial, ST_MODES[pooler])
        _write_about(classifier, partial, fmt, Path(run_dir), out.name)
        partial.chmod(0o755)  # (mkdtemp's folder is the owner's alone)
        os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    log(f"wrote {set_id} as a {fmt} model to {out}")
    return out


def _is_bert(encoder_model) -> bool:
    return getattr(encoder_model.config, "model_type", None) == "bert" and \
        getattr(encoder_model, "pooler", None) is not None


def _labels(classifier) -> dict:
    return {i: str(name) for i, name in enumerate(classifier.classes_)}


def _tokenizer(classifier):
    """The run's tokenizer, its length limit the run's (``truncation=True`` cuts there)."""
    import copy

    tokenizer = copy.deepcopy(classifier.encoder.tokenizer)
    tokenizer.model_max_length = classifier.encoder.max_length
    return tokenizer


def _write_hf(classifier, out: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    encoder = classifier.model.encoder
    config = encoder.config.__class__.from_dict(encoder.config.to_dict())
    labels = _labels(classifier)
    config.num_labels = len(labels)
    config.id2label, config.label2id = labels, {name: i for i, name in labels.items()}
    config.problem_type = "single_label_classification"
    config.architectures = None
    with torch.random.fork_rng(devices=[]):
        exported = AutoModelForSequenceClassification.from_config(config)
    base = getattr(exported, exported.base_model_prefix)
    base.load_state_dict(encoder.state_dict())
    with torch.no_grad():
        exported.classifier.weight.copy_(classifier.model.classifier.weight)
        exported.classifier.bias.copy_(classifier.model.classifier.bias)
    exported.eval().save_pretrained(out)
    _tokenizer(classifier).save_pretrained(out)


def _write_sentence_transformers(classifier, out: Path, mode: str) -> None:
    import tempfile

    import torch

    try:
        from sentence_transformers import SentenceTransformer
        try:  # sentence-transformers >= 6
            from sentence_transformers.sentence_transformer.modules import (
                Dense,
                Pooling,
                Transformer,
            )
        except ImportError:
            from sentence_transformers.models import Dense, Pooling, Transformer
    except ImportError:
        raise PoolkitError("--format sentence-transformers needs the sentence-transformers "
                           "package: pip install sentence-transformers") from None
    model = classifier.model
    with tempfile.TemporaryDirectory() as folder:
        model.encoder.save_pretrained(folder)
        _tokenizer(classifier).save_pretrained(folder)
        transformer = Transformer(folder, max_seq_length=classifier.encoder.max_length)
        size = model.classifier.in_features
        pooling = Pooling(size, mode)
        dense = Dense(size, model.classifier.out_features, bias=True,
                      activation_function=torch.nn.Identity(),
                      init_weight=model.classifier.weight.detach().clone(),
                      init_bias=model.classifier.bias.detach().clone())
        prompt = classifier.encoder.prompt  # the run's --prompt: its default prompt there
        SentenceTransformer(modules=[transformer, pooling, dense], device="cpu",
                            prompts={"poolkit": prompt} if prompt else None,
                            default_prompt_name="poolkit" if prompt else None).save(
            str(out), create_model_card=False)


def _write_about(classifier, out: Path, fmt: str, run_dir: Path, name: str) -> None:
    """``poolkit.json`` and a README: the label of each logit, the set, the run."""
    labels = _labels(classifier)
    about = {"labels": {str(i): label for i, label in labels.items()}, "set": classifier.set_id,
             "format": fmt, "run": str(run_dir.resolve()),
             "max_length": classifier.encoder.max_length,
             **({"prompt": classifier.encoder.prompt} if classifier.encoder.prompt else {})}
    (out / "poolkit.json").write_text(json.dumps(about, indent=2) + "\n")
    table = "\n".join(f"| {i} | {markdown_cell(label)} |" for i, label in labels.items())
    text = ('{"text": "a text", "text_pair": "its pair"}' if classifier.pairs
            else '"a text"')
    use = ('from transformers import pipeline\n'
           f'classify = pipeline("text-classification", model={json.dumps(name)})\n'
           f'classify([{text}], truncation=True)' if fmt == "hf" else
           'from sentence_transformers import SentenceTransformer\n'
           f'model = SentenceTransformer({json.dumps(name)})\n'
           + ('logits = model.encode([["a text", "its pair"]])  # the pair, tokenized together'
              if classifier.pairs else
              'logits = model.encode(["a text"])  # softmax over them: the probabilities'))
    (out / "README.md").write_text(
        f"# {classifier.set_id}, exported by poolkit\n\n"
        f"Feature set `{classifier.set_id}` of the poolkit run in `{run_dir}`: its encoder, "
        "pooler and final head (trained on all the run's items; see poolkit's README, "
        "\"Use the winner\").\n\n"
        "Logit *i* is label id *i*:\n\n| id | label |\n|---:|:--|\n"
        f"{table}\n\n```python\n{use}\n```\n\n"
        f"Texts are cut at {classifier.encoder.max_length} tokens, as the run cut them.\n"
        + (f"\nThe run prepended {classifier.encoder.prompt!r} to every text: "
           + ("the model's default prompt does.\n" if fmt != "hf" else
              "prepend it to yours.\n") if classifier.encoder.prompt else ""))
