"""A run's settings, as the CLI and the Python API take them: :class:`RunConfig`."""

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from poolkit.encoding.cache import parse_budget
from poolkit.encoding.encode import CACHE_MODES
from poolkit.encoding.model import attention_asked, load_encoder
from poolkit.errors import PoolkitError
from poolkit.evaluation.metrics import METRICS, PRIMARY
from poolkit.evaluation.protocols import resolve
from poolkit.heads.base import FineTuneConfig, HeadConfig
from poolkit.pooling.isolation import DEFAULT_TIMEOUT
from poolkit.pooling.pooler import Pooler

#: The most head seeds a run takes (each seed is a head per feature set).
MAX_SEEDS = 1000
#: Marks a field that changes where and how results are written, never the results:
#: it takes no part in the run's identity (the default run folder, what is reused).
OUTPUT_ONLY = {"output_only": True}
#: Marks a field added after run folders existed: it joins the run's identity only when
#: set, so the commands that leave it out keep their folders (and finished heads).
WHEN_SET = {"when_set": True}


@dataclass(frozen=True)
class RunConfig:
    """Everything a run was asked for. ``data=None`` and ``model=None`` mean the
    embedded defaults; ``poolers=None`` every registered pooler (names or
    :class:`~poolkit.Pooler` instances); ``seeds`` a count N (seeds 0..N-1) or the
    seeds (``None``: the protocol's); ``layers`` a ``--layers`` spec (default the
    last layer); ``protocol`` a name in :data:`~poolkit.evaluation.protocols.PROTOCOLS`,
    ``folds`` its number of folds (``None``: the protocol's; 1: one split);
    ``metric`` the primary metric (ranking, groups); ``baseline`` a feature set
    (``pooler@layer``, or a pooler name) every other is compared with;
    ``finetune`` (a :class:`~poolkit.heads.finetune.FineTuneConfig`) adds each pooler
    fine-tuned with the encoder; ``max_train_texts`` caps each fold's training
    part (a stratified subset, for every head); ``max_texts`` caps the data
    itself (a stratified subset, before any split); ``label_pattern`` derives
    the labels from their cells (a regular expression; rows it does not match
    are left out); ``text_pair_col`` makes each item a pair of texts (that column
    the second text)."""

    data: str | Path | None = None
    text_col: str = "text"
    label_col: str = "label"
    test_data: str | Path | None = None
    labels: tuple | None = None
    model: str | tuple | None = None
    poolers: tuple | None = None
    plugins_dir: str | Path | None = None
    seeds: int | tuple | None = None
    protocol: str = "default"
    folds: int | None = None
    layers: object = None
    max_length: int | None = None
    device: str | None = None
    cache_dtype: str = "fp16"
    precision: str = "bf16"
    split_seed: int = 0
    validation_size: float = 0.1
    test_size: float = 0.1
    head: HeadConfig = field(default_factory=HeadConfig)
    finetune: FineTuneConfig | None = None
    max_train_texts: int | None = None
    max_texts: int | None = field(default=None, metadata=WHEN_SET)
    label_pattern: str | None = field(default=None, metadata=WHEN_SET)
    text_pair_col: str | None = field(default=None, metadata=WHEN_SET)
    empty_texts: str = "skip"
    encoding: str = "utf-8"
    trust_remote_code: bool = False
    #: ``--attn-implementation`` (``None``: transformers' choice, as ``auto``)
    attn_implementation: str | None = field(default=None, metadata=WHEN_SET)
    #: ``--prompt``: a prompt the model's folder names, or a text prepended to every text
    prompt: str | None = field(default=None, metadata=WHEN_SET)
    out: str | Path | None = field(default=None, metadata=OUTPUT_ONLY)
    cache_dir: str | Path | None = field(default=None, metadata=OUTPUT_ONLY)
    #: what the cache keeps (tokens, pooled, auto) and auto's size limit: where the
    #: features come from, not what they are (heads are keyed by the entry they used)
    cache_mode: str = field(default="auto", metadata=OUTPUT_ONLY)
    cache_budget: str | float | None = field(default=None, metadata=OUTPUT_ONLY)
    predictions: bool = field(default=False, metadata=OUTPUT_ONLY)
    pooler_timeout: float = field(default=DEFAULT_TIMEOUT, metadata=OUTPUT_ONLY)
    progress: bool = field(default=False, metadata=OUTPUT_ONLY)
    metric: str = field(default=PRIMARY, metadata=OUTPUT_ONLY)
    baseline: str | None = field(default=None, metadata=OUTPUT_ONLY)
    save_models: bool = field(default=False, metadata=OUTPUT_ONLY)

    def __post_init__(self):
        if self.attn_implementation == "auto":  # transformers' choice, as None: one identity
            object.__setattr__(self, "attn_implementation", None)

    def plan(self) -> tuple:
        """``(protocol, folds)``: the :class:`~poolkit.evaluation.protocols.Protocol` and its number of folds."""
        protocol, folds, _ = resolve(self.protocol, self.folds, self.seeds, self.test_data)
        return protocol, folds

    def model_list(self) -> list:
        """The models to compare: ``[None]`` (the embedded default), or the names given."""
        if self.model is None or isinstance(self.model, (str, Path)):
            return [self.model]
        models = list(self.model)
        if not models:
            raise PoolkitError("--model: give at least one model")
        if len(set(map(str, models))) != len(models):
            raise PoolkitError(f"--model lists a model twice: {','.join(map(str, models))}")
        return models

    def encoder(self, model=None):
        """The :class:`~poolkit.encoding.model.Encoder` of ``model`` (one of :meth:`model_list`)
        under this run's encoder options."""
        return load_encoder(model, max_length=self.max_length,
                            trust_remote_code=self.trust_remote_code,
                            attn_implementation=self.attn_implementation, prompt=self.prompt)

    def seed_list(self) -> list[int]:
        """The seeds, checked: 1 to :data:`MAX_SEEDS` distinct integers >= 0 (by default,
        the protocol's)."""
        seeds = resolve(self.protocol, self.folds, self.seeds, self.test_data)[2]
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

    def validate(self) -> None:
        """Refuse, with one line naming the option, a setting out of its range."""
        if self.folds is not None and (isinstance(self.folds, bool) or not isinstance(
                self.folds, (int, np.integer)) or self.folds < 1):
            raise PoolkitError(f"--folds {self.folds}: give 1 (one split) or a number of folds "
                               ">= 2")
        self.plan()
        self.seed_list()
        self.model_list()

        attention_asked(self.attn_implementation)
        if self.metric not in METRICS:
            raise PoolkitError(f"--metric {self.metric}: use one of {', '.join(METRICS)}")
        self.head.validate()
        if self.finetune is not None:
            self.finetune.validate()
            if self.plan()[0].name != "default":
                raise PoolkitError(f"--finetune trains poolkit's heads; the {self.protocol} "
                                   "protocol trains scikit-learn probes (leave out --protocol)")

        if self.cache_mode not in CACHE_MODES:
            raise PoolkitError(f"--cache-mode {self.cache_mode}: use one of "
                               f"{', '.join(CACHE_MODES)}")
        if self.cache_budget is not None:
            try:
                parse_budget(self.cache_budget)
            except ValueError as exc:
                raise PoolkitError(f"--cache-budget {exc}") from None
        if self.save_models and self.finetune is None:
            raise PoolkitError("--save-models keeps fine-tuned weights; add --finetune")
        for option, value in (("--max-train-texts", self.max_train_texts),
                              ("--max-texts", self.max_texts)):
            if value is not None and (isinstance(value, bool) or not isinstance(
                    value, (int, np.integer)) or value < 2):
                raise PoolkitError(f"{option} {value}: give an integer >= 2")
        if self.label_pattern is not None:
            import re

            try:
                re.compile(str(self.label_pattern))
            except re.error as exc:
                raise PoolkitError(f"--label-pattern {self.label_pattern!r} is not a regular "
                                   f"expression: {exc}") from None
        import codecs

        try:
            codecs.lookup(str(self.encoding))
        except LookupError:
            raise PoolkitError(f"--encoding {self.encoding}: unknown encoding; e.g. utf-8, "
                               "latin-1, cp1252, utf-16") from None
        if isinstance(self.split_seed, bool) or not isinstance(self.split_seed, (int, np.integer)) \
                or not 0 <= self.split_seed < 2**32:
            raise PoolkitError(f"--split-seed {self.split_seed}: give an integer from 0 to "
                               f"{2**32 - 1}")
        try:
            timeout = float(self.pooler_timeout)
        except (TypeError, ValueError):
            timeout = math.nan
        if not math.isfinite(timeout) or timeout <= 0:
            raise PoolkitError(f"--pooler-timeout {self.pooler_timeout}: give a number of "
                               "seconds above 0")

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
        """The options the results depend on (every field not marked output-only)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if not f.metadata.get("output_only")
                and not (f.metadata.get("when_set") and getattr(self, f.name) is None)}
