"""``poolkit export``: a run directory's tables in the formats declared here, once each.

An export format is an :class:`Exporter` in :data:`EXPORTERS`: its name (the
``--format`` value and the usual file suffix), whether it shows rounded
display cells (intervals, marks) or the raw numbers, and a function from a
DataFrame to text. ``poolkit export --format`` and its help derive from it.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from poolkit.errors import PoolkitError, one_line
from poolkit.evaluation.metrics import PRIMARY
from poolkit.pipeline.results import NAME_COLUMNS, display_pairs, display_table, read_table_back
from poolkit.pipeline.runs import RunDirectory
from poolkit.winner.plot import layer_grid, read_summary


@dataclass(frozen=True)
class Exporter:
    name: str
    #: True: the summary and pairs tables as display cells (rounded, with intervals
    #: and marks), for reading; False: the numbers as stored, for further work
    display: bool
    write: Callable
    #: writes a record (the recipe) as it is, where the format can; else it becomes
    #: a setting/value table
    write_record: Callable | None = None


def _latex(frame) -> str:
    frame = frame.rename(columns=_latex_escape).map(
        lambda v: _latex_escape(v).replace("±", r"$\pm$") if isinstance(v, str) else v
    )
    return frame.to_latex(index=False, float_format="%.4f", escape=False)


def _latex_escape(text: str) -> str:
    text = text.replace("\\", "\x00")
    for char in "&%$#_{}":
        text = text.replace(char, "\\" + char)
    for char, command in (("\x00", "textbackslash"), ("~", "textasciitilde"), ("^", "textasciicircum")):
        text = text.replace(char, f"\\{command}{{}}")
    return text


def markdown_cell(text: str) -> str:
    """``text`` as one Markdown table cell: its ``|`` escaped (a column of its own
    otherwise), line breaks as ``<br>`` (a row of their own otherwise), and ``&``, ``<``,
    ``>`` as HTML entities (raw HTML otherwise)."""
    text = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace("\\", "\\\\").replace("|", "\\|")
    return text.replace("\r\n", "<br>").replace("\n", "<br>").replace("\r", "<br>")


def _markdown(frame) -> str:
    frame = frame.rename(columns=markdown_cell).map(
        lambda v: markdown_cell(v) if isinstance(v, str) else v)
    return frame.to_markdown(index=False) + "\n"


#: Format name -> :class:`Exporter`.
EXPORTERS = {e.name: e for e in (
    Exporter("csv", False, lambda frame: frame.to_csv(index=False)),
    Exporter("md", True, _markdown),
    Exporter("latex", True, _latex),
    Exporter("json", False, lambda frame: frame.to_json(orient="records", indent=2) + "\n",
             write_record=lambda record: json.dumps(record, indent=2) + "\n"),
    Exporter("html", True, lambda frame: frame.to_html(index=False, float_format="%.4f") + "\n"),
)}

#: Tables a run directory holds, for ``poolkit export --table``.
EXPORT_TABLES = ("summary", "results", "pairs", "grid", "predictions", "recipe")


def export_run(run_dir, fmt: str, table: str = "summary") -> str:
    """A table of ``RUN_DIR`` as text in format ``fmt`` (a name in :data:`EXPORTERS`).

    ``table``: ``summary`` (per pooler × layer), ``results`` (per seed),
    ``pairs`` (paired tests), ``grid`` (a layer sweep's mean primary metric,
    pooler × layer), ``predictions`` (per test item, when the run saved them)
    or ``recipe`` (what reproduces the run). Only files of the run that last
    wrote ``RUN_DIR`` are served.
    """
    import pandas as pd

    exporter = EXPORTERS.get(fmt)
    if exporter is None:
        raise PoolkitError(f"unknown format '{fmt}'; use one of {', '.join(EXPORTERS)}")
    if table not in EXPORT_TABLES:
        raise PoolkitError(f"unknown table '{table}'; use one of {', '.join(EXPORT_TABLES)}")
    if not (Path(run_dir) / "summary.csv").is_file():
        raise PoolkitError(f"'{run_dir}' is not a poolkit run directory (no summary.csv)")
    path = Path(run_dir) / (f"{table}.json" if table == "recipe" else f"{table}.csv")
    if table != "grid":
        listed = RunDirectory(run_dir).files()
        if not path.is_file() or (listed is not None and path.name not in listed):
            hint = " (run with --predictions to save them)" if table == "predictions" else ""
            raise PoolkitError(f"run directory '{run_dir}' has no {path.name} from its last "
                               f"run{hint}")
    RunDirectory(run_dir).verify(path.name)
    try:
        if table == "grid":
            grid = _primary_grid(run_dir)
            return exporter.write(grid.round(3) if exporter.display else grid)
        if table == "recipe":
            recipe = json.loads(path.read_text())
            if exporter.write_record is not None:
                return exporter.write_record(recipe)
            frame = pd.DataFrame({"setting": list(recipe),
                                  "value": [v if isinstance(v, str) else json.dumps(v)
                                            for v in recipe.values()]})
        else:
            frame = read_table_back(path, NAME_COLUMNS[table])
        if exporter.display and table in ("summary", "pairs"):
            frame = display_table(frame) if table == "summary" else display_pairs(frame)
        return exporter.write(frame)
    except PoolkitError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        name = "summary.csv" if table == "grid" else path.name
        raise PoolkitError(f"'{Path(run_dir) / name}' could not be read as poolkit's "
                           f"{table} table ({one_line(exc)}); was it written by poolkit run?"
                           ) from None


def _primary_grid(run_dir):
    """Mean primary metric of single-layer poolers (rows) × layers (columns) of a layer sweep."""
    grid = layer_grid(read_summary(run_dir), PRIMARY)
    if grid is None:
        raise PoolkitError(f"run directory '{run_dir}' has no layer sweep (fewer than two layers); "
                           "run with --layers, e.g. --layers all")
    grid.columns = [f"layer {layer}" for layer in grid.columns]
    return grid.reset_index()
