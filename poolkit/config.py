"""A run's settings, as the CLI and the Python API take them: :class:`RunConfig`."""

import codecs
import math
import os
import re
from dataclasses import MISSING, dataclass, field, fields, make_dataclass, replace
from functools import cache, cached_property
from pathlib import Path

import numpy as np

from poolkit.encoding.cache import parse_budget
from poolkit.encoding.encode import CACHE_MODES
from poolkit.encoding.model import attention_asked, load_encoder
from poolkit.errors import PoolkitError
from poolkit.evaluation.decisions import rope_of
from poolkit.evaluation.metrics import METRICS
from poolkit.evaluation.protocols import resolve
from poolkit.heads.base import FineTuneConfig, HeadConfig
from poolkit.options import GROUPS, MAX_SEEDS, OPTIONS, comma_list, flag_name
from poolkit.pooling.pooler import Pooler


def _declared(name: str, **settings):
    """A RunConfig field from its option's one declaration: its default, and whether it is
    part of the run's identity (:data:`~poolkit.options.IDENTITY`)."""
    option = OPTIONS[name]
    default = settings.pop("default", option.default)
    return field(default=default, metadata={"identity": option.identity}, **settings)


@dataclass(frozen=True)
class RunConfig:
    """Everything a run was asked for: one field per option (:data:`~poolkit.options.OPTIONS`
    says what each means), plus ``out`` (the run directory) and ``progress`` (a progress bar).
    ``data=None`` and ``model=None`` mean the embedded defaults; ``poolers=None`` every
    registered pooler (names or :class:`~poolkit.Pooler` instances); ``seeds`` a count N
    (seeds 0..N-1) or the seeds (``None``: the protocol's); ``head`` a
    :class:`~poolkit.heads.base.HeadConfig`; ``finetune`` a
    :class:`~poolkit.heads.base.FineTuneConfig` (or ``None``: no fine-tuning). Build one
    from any surface's values with :meth:`from_options`."""

    data: str | Path | None = _declared("data")
    text_col: str = _declared("text_col")
    label_col: str = _declared("label_col")
    test_data: str | Path | None = _declared("test_data")
    labels: tuple | None = _declared("labels")
    model: str | tuple | None = _declared("model")
    poolers: tuple | None = _declared("poolers")
    plugins_dir: str | Path | None = _declared("plugins_dir")
    seeds: int | tuple | None = _declared("seeds")
    protocol: str = _declared("protocol")
    folds: int | None = _declared("folds")
    layers: object = _declared("layers")
    max_length: int | None = _declared("max_length")
    device: str | None = _declared("device")
    cache_dtype: str = _declared("cache_dtype")
    precision: str = _declared("precision")
    split_seed: int = _declared("split_seed")
    validation_size: float = _declared("validation_size")
    test_size: float = _declared("test_size")
    head: HeadConfig = _declared("head", default_factory=HeadConfig, default=MISSING)
    finetune: FineTuneConfig | None = _declared("finetune", default=None)
    max_train_texts: int | None = _declared("max_train_texts")
    max_texts: int | None = _declared("max_texts")
    label_pattern: str | None = _declared("label_pattern")
    text_pair_col: str | None = _declared("text_pair_col")
    empty_texts: str = _declared("empty_texts")
    encoding: str = _declared("encoding")
    trust_remote_code: bool = _declared("trust_remote_code")
    #: ``None``: transformers' choice (``auto`` is kept as ``None``: one identity)
    attn_implementation: str | None = _declared("attn_implementation", default=None)
    compile: bool = _declared("compile")
    prompt: str | None = _declared("prompt")
    out: str | Path | None = field(default=None, metadata={"identity": "no"})
    cache_dir: str | Path | None = _declared("cache_dir")
    cache_mode: str = _declared("cache_mode")
    cache_budget: str | float | None = _declared("cache_budget")
    predictions: bool = _declared("predictions")
    pooler_timeout: float = _declared("pooler_timeout")
    progress: bool = field(default=False, metadata={"identity": "no"})
    metric: str = _declared("metric")
    baseline: str | None = _declared("baseline")
    rope: float | None = _declared("rope")
    save_models: bool = _declared("save_models")

    def __post_init__(self):
        if self.attn_implementation == "auto":  # transformers' choice, as None: one identity
            object.__setattr__(self, "attn_implementation", None)

    @classmethod
    def from_options(cls, values: dict, where=None) -> "RunConfig":
        """The RunConfig of option ``values`` from any surface (the command line, a suite
        file, the Python API): each checked for its kind and then its range (one line
        naming ``where(name)``: a suite file's task and key), lists made tuples (a string
        of names split at its commas, as the command line splits it), ``finetune=True``
        and the head's and fine-tuning's own options (``epochs``, ``finetune_epochs``, ...)
        made their settings; ``None`` means not given (the default)."""
        named, where = where, where or (lambda name: name)
        unknown = sorted(set(values) - set(OPTIONS) - {"out", "progress"})
        if unknown:
            raise PoolkitError(f"{where(unknown[0])}: no such option; the options are "
                               f"{', '.join(OPTIONS)}")
        given = {k: v for k, v in values.items() if v is not None}
        for name, value in given.items():
            if name in OPTIONS:
                OPTIONS[name].check(value, where(name))
        given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
        for name in ("poolers", "labels"):  # names, as the command line spells them
            if isinstance(given.get(name), Path):
                given[name] = (str(given[name]),)
            elif isinstance(given.get(name), str):
                given[name] = comma_list(given[name]) or (given[name],)
        if isinstance(given.get("model"), tuple) and len(given["model"]) == 1:
            given["model"] = given["model"][0]
        parts = {"head": {}, "finetune": {}}
        for name in [n for n in given if n in OPTIONS and OPTIONS[n].into]:
            group, setting = OPTIONS[name].into.split(".")
            parts[group][setting] = given.pop(name)
        if not isinstance(given.get("head", HeadConfig()), HeadConfig):
            raise PoolkitError(f"{where('head')}: give a HeadConfig, not {given['head']!r}")
        given["head"] = replace(given.get("head") or HeadConfig(), **parts["head"])
        finetune = given.pop("finetune", None)
        if finetune is True:
            given["finetune"] = FineTuneConfig(**parts["finetune"])
        elif isinstance(finetune, FineTuneConfig):
            given["finetune"] = replace(finetune, **parts["finetune"])
        elif finetune not in (None, False):
            raise PoolkitError(f"{where('finetune')}: give true, false or a FineTuneConfig")
        config = cls(**given)
        try:
            config.validate()
        except PoolkitError as exc:  # a suite file's task and key, not the CLI's flag
            raise PoolkitError(_named_as(str(exc), named) if named else str(exc)) from None
        return config

    @cached_property
    def planned(self) -> "Plan":
        """The :class:`Plan`, worked out once (the seeds checked)."""
        protocol, folds, seeds = resolve(self.protocol, self.folds, self.seeds, self.test_data)
        return Plan(protocol, folds, tuple(_seed_list(seeds)))

    def plan(self) -> tuple:
        """``(protocol, folds)``: the :class:`~poolkit.evaluation.protocols.Protocol` and its
        number of folds."""
        return self.planned.protocol, self.planned.folds

    def group(self, name: str):
        """The settings of one group of :data:`~poolkit.options.GROUPS` (``data``,
        ``encoder``, ``cache``, ...), as a frozen dataclass: what a stage of that kind uses."""
        if name not in GROUPS:
            raise ValueError(f"no settings group '{name}'; the groups are {', '.join(GROUPS)}")
        kind = _group_class(name)
        return kind(**{f.name: getattr(self, f.name) for f in fields(kind)})

    def model_list(self) -> list:
        """The models to compare: ``[None]`` (the embedded default), or the names given."""
        if self.model is None or isinstance(self.model, (str, Path)):
            return [self.model]
        models = list(self.model)
        if not models:
            raise PoolkitError("--model: give at least one model")
        seen = {}
        for model in models:  # one folder under two spellings (M, M/, ./M) is one model
            same = os.path.realpath(model) if os.path.exists(str(model)) else str(model)
            if same in seen:
                raise PoolkitError(f"--model lists a model twice: {seen[same]} and {model}")
            seen[same] = model
        return models

    def encoder(self, model=None):
        """The :class:`~poolkit.encoding.model.Encoder` of ``model`` (one of :meth:`model_list`)
        under this run's encoder options."""
        return load_encoder(model, max_length=self.max_length,
                            trust_remote_code=self.trust_remote_code,
                            attn_implementation=self.attn_implementation, prompt=self.prompt,
                            compile=self.compile)

    def seed_list(self) -> list[int]:
        """The seeds, checked: 1 to :data:`MAX_SEEDS` distinct integers >= 0 (by default,
        the protocol's)."""
        return list(self.planned.seeds)

    def validate(self) -> None:
        """Refuse, with one line naming the option, a setting out of its range."""
        if self.folds is not None and not (_is_int(self.folds) and self.folds >= 1):
            raise PoolkitError(f"--folds {self.folds}: give 1 (one split) or a number of folds "
                               ">= 2")
        self.plan()
        self.seed_list()
        self.model_list()
        attention_asked(self.attn_implementation)
        if self.metric not in METRICS:
            raise PoolkitError(f"--metric {self.metric}: use one of {', '.join(METRICS)}")
        rope_of(self.rope, self.metric)
        self.head.validate()
        if self.finetune is not None:
            self.finetune.validate()
            if self.plan()[0].name != "default":
                raise PoolkitError(f"--finetune trains poolkit's heads; the {self.protocol} "
                                   "protocol trains scikit-learn probes (leave out --protocol)")
        if self.save_models and self.finetune is None:
            raise PoolkitError("--save-models keeps fine-tuned weights; add --finetune")
        self._check_cache()
        self._check_values()

    def _check_cache(self) -> None:
        if self.cache_mode not in CACHE_MODES:
            raise PoolkitError(f"--cache-mode {self.cache_mode}: use one of "
                               f"{', '.join(CACHE_MODES)}")
        if self.cache_budget is not None:
            try:
                parse_budget(self.cache_budget)
            except ValueError as exc:
                raise PoolkitError(f"--cache-budget {exc}") from None

    def _check_values(self) -> None:
        """The options whose values are checked one by one: ``(option, value, ok, wanted)``,
        where ``ok(value)`` says whether the value is good."""
        checks = (
            ("--max-train-texts", self.max_train_texts, _optional_count, "give an integer >= 2"),
            ("--max-texts", self.max_texts, _optional_count, "give an integer >= 2"),
            ("--label-pattern", self.label_pattern, _compiles, None),
            ("--encoding", self.encoding, _known_encoding,
             "unknown encoding; e.g. utf-8, latin-1, cp1252, utf-16"),
            ("--split-seed", self.split_seed, lambda v: _is_int(v) and 0 <= v < 2**32,
             f"give an integer from 0 to {2**32 - 1}"),
            ("--pooler-timeout", self.pooler_timeout, _positive_seconds,
             "give a number of seconds above 0"),
        )
        for option, value, ok, wanted in checks:
            if not ok(value):
                raise PoolkitError(f"{option} {value}: {wanted}")

    def saved(self) -> dict:
        """The options as JSON values, for the run directory's settings.json; with
        :meth:`from_saved` they rebuild the run's stages later (``poolkit predict``).
        Local paths are kept as given and the working folder is recorded beside them
        (``cwd``), since a model's name as given is part of its cache key."""
        import os
        from dataclasses import asdict, is_dataclass

        out = {"cwd": os.getcwd()}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "poolers" and value is not None:
                value = [p.name if isinstance(p, Pooler) else p for p in value]
            elif is_dataclass(value):
                value = asdict(value)
            elif isinstance(value, (tuple, list)):
                value = [str(v) if isinstance(v, Path) else v for v in value]
            elif isinstance(value, Path):
                value = str(value)
            out[f.name] = value
        return out

    @classmethod
    def from_saved(cls, saved: dict, **changes) -> "RunConfig":
        """The :class:`RunConfig` :meth:`saved` wrote (lists back to tuples, the head and
        fine-tuning settings back to their classes; unknown keys, from a later poolkit,
        left out), with ``changes`` applied."""
        known = {f.name for f in fields(cls)}
        options = {k: v for k, v in saved.items() if k in known}
        for name in ("labels", "model", "poolers", "seeds", "layers"):
            if isinstance(options.get(name), list):
                options[name] = tuple(options[name])
        options["head"] = HeadConfig(**options.get("head", {}))
        if options.get("finetune") is not None:
            options["finetune"] = FineTuneConfig(**options["finetune"])
        return cls(**{**options, **changes})

    def results_options(self) -> dict:
        """The options the results depend on (every field not marked output-only; one
        marked ``when set`` only when given: not ``None``, and for a flag not off)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.metadata["identity"] == "yes"
                or (f.metadata["identity"] == "when set"
                    and getattr(self, f.name) is not None and getattr(self, f.name) is not False)}


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _optional_count(value) -> bool:
    return value is None or (_is_int(value) and value >= 2)


def _compiles(pattern) -> bool:
    if pattern is None:
        return True
    try:
        re.compile(str(pattern))
    except re.error as exc:
        raise PoolkitError(f"--label-pattern {pattern!r} is not a regular expression: "
                           f"{exc}") from None
    return True


def _known_encoding(name) -> bool:
    try:
        codecs.lookup(str(name))
    except LookupError:
        return False
    return True


def _positive_seconds(value) -> bool:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return False
    return math.isfinite(seconds) and seconds > 0


def _named_as(message: str, where) -> str:
    """A range check's ``message``, said in the command line's words (``--max-texts -5:
    ...``), with its option named as ``where`` names it (a suite file's task and key)."""
    for name in OPTIONS:
        flag = flag_name(name)
        if message.startswith(flag + " ") and where(name) != flag:
            return f"{where(name)}:{message[len(flag):]}"
    return message


@dataclass(frozen=True)
class Plan:
    """What a run's protocol makes of its options, worked out once: the
    :class:`~poolkit.evaluation.protocols.Protocol`, its number of folds, and the seeds."""

    protocol: object
    folds: int
    seeds: tuple


def _seed_list(seeds) -> list:
    """``seeds`` (a count N: seeds 0..N-1, or the seeds) checked: 1 to :data:`MAX_SEEDS`
    distinct integers >= 0."""
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


@cache
def _group_class(group: str):
    """The frozen dataclass of one group's settings: its options that are RunConfig fields
    (``output`` also holds ``out`` and ``progress``), made on first use."""
    names = [f.name for f in fields(RunConfig) if f.name in OPTIONS
             and OPTIONS[f.name].group == group]
    names += ["out", "progress"] if group == "output" else []
    return make_dataclass(f"{group.title()}Settings", names, frozen=True)
