"""Charts of a run directory's summary: a dot chart per metric and a layer heat map.

matplotlib is imported inside the functions (the CLI stays fast to start) and used
through its object API (``Figure``, ``fig.savefig``) without pyplot: no display, no
backend choice, no global figure state.
"""

import json
import math
import os
import textwrap
from pathlib import Path

from poolkit.errors import PoolkitError, one_line
from poolkit.evaluation.across import chosen_pairs, format_p
from poolkit.evaluation.decisions import rope_words
from poolkit.evaluation.metrics import METRICS, PRIMARY
from poolkit.files import refuse_owned, write_atomic
from poolkit.pipeline.results import NAME_COLUMNS, read_table_back
from poolkit.pipeline.runs import RunDirectory
from poolkit.pipeline.suites import read_verdict

PLOT_FORMATS = ("png", "svg", "pdf")

#: Dot colour of rows in significance group 1 (tied with the best) and of the rest.
BEST_GROUP_COLOR = "#1f77b4"
OTHER_GROUP_COLOR = "#8c8c8c"
EQUIVALENT_COLOR = "#2ca02c"


def plot_run(run_dir, metric: str = PRIMARY, formats=("png", "svg"), out_dir=None) -> list[Path]:
    """Write charts of ``RUN_DIR/summary.csv`` and return the paths written.

    For each metric (``metric="all"``: every metric in ``poolkit.evaluation.metrics.METRICS``):
    ``<metric>.<fmt>``, a dot chart of every finished feature set, and
    ``<metric>-layers.<fmt>``, a pooler × layer heat map, when the single-layer
    rows span more than one layer. Files go to ``out_dir``, default ``RUN_DIR/plots``.
    SVG and PDF output is byte-identical for the same summary.
    """
    metrics = _check_metric(metric)
    formats = _check_formats(formats)
    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
    summary_path = run_dir / "summary.csv"
    settings = _settings(run_dir)
    title_suffix = _title_suffix(settings)

    figures = []  # (file stem, Figure)
    for name in metrics:
        if f"{name}_mean" not in summary:
            if metric == "all":
                continue
            raise PoolkitError(f"'{summary_path}' has no column '{name}_mean'; was it written by poolkit run?")
        if not len(_plot_rows(summary, name)):
            if metric == "all":
                continue  # e.g. roc_auc is NaN when a label is missing from the test split
            raise PoolkitError(f"nothing to plot in '{summary_path}': no finished feature set has a "
                               f"value of {name} (failed rows are skipped)")
        majority = settings.get("majority_rate") if name == "accuracy" else None
        if isinstance(majority, bool) or not isinstance(majority, (int, float)):
            majority = None  # absent or garbled: no line
        figures.append((name, dot_chart(summary, name, title=f"{name}{title_suffix}",
                                        majority=majority)))
        heatmap = layer_heatmap(summary, name, title=f"{name} by layer{title_suffix}")
        if heatmap is not None:
            figures.append((f"{name}-layers", heatmap))
    if not figures:
        raise PoolkitError(f"nothing to plot in '{summary_path}': no finished feature set "
                           "(failed rows are skipped)")

    contents = {f"{stem}.{fmt}": _saver(figure, fmt) for stem, figure in figures for fmt in formats}
    return _write_charts(run_dir, contents, out_dir)


def read_summary(run_dir):
    """``RUN_DIR/summary.csv`` as a DataFrame, names (pooler, layer, model) as written."""
    import pandas as pd

    path = Path(run_dir) / "summary.csv"
    if not path.is_file():
        raise PoolkitError(f"'{run_dir}' is not a poolkit run directory (no summary.csv)")
    RunDirectory(run_dir).verify("summary.csv", "settings.json")
    try:
        summary = read_table_back(path, NAME_COLUMNS["summary"])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise PoolkitError(f"cannot read '{path}': {one_line(exc)}") from None
    if "pooler" not in summary:
        raise PoolkitError(f"'{path}' has no 'pooler' column; was it written by poolkit run?")
    ok = _ok(summary)
    keys = summary.loc[ok, ["pooler"]].assign(layer=_layer_text(summary)[ok],
                                              encoder=_encoder(summary)[ok],
                                              model=_model(summary)[ok])
    duplicated = keys[keys.duplicated()]
    if len(duplicated):
        pooler, layer, encoder, model = duplicated.iloc[0]
        raise PoolkitError(f"'{path}' has more than one row for pooler '{pooler}' at layer {layer}"
                           f" ({encoder}{', model ' + model if model else ''})")
    return summary


def _model(rows):
    """The ``model`` column (runs comparing several models), else empty labels."""
    return _text_column(rows, "model", "")


def _encoder(rows):
    """The ``encoder`` column (``frozen`` where a run directory has none)."""
    return _text_column(rows, "encoder", "frozen")


def _text_column(rows, name: str, default: str):
    """Column ``name`` as text, ``default`` where it is empty or the table lacks it."""
    if name not in rows:
        return rows["pooler"].map(lambda _: default)
    return rows[name].fillna(default).astype(str)


def dot_chart(summary, metric: str, title: str | None = None, majority: float | None = None):
    """A ``Figure``: one row per finished feature set, best first, mean ± 95% interval.

    Dots are the means over seeds; the whiskers (a ``LineCollection`` with gid
    ``"interval"``) span ``<metric>_ci_low``..``<metric>_ci_high`` (the interval
    over resamples of the items and the seeds), or mean ± std where it is NaN,
    which the x label then says. Rows in significance group 1 are coloured and
    tagged "[g1]" when ``group`` is present; where whiskers and groups seem to
    disagree, a note under the chart says why (gid ``"note"``). ``majority``
    draws the majority-class rate as a dashed line (gid ``"majority"``), or, when
    it lies outside the data's range, says it at that edge instead of shrinking
    the differences to fit it in.
    """
    import numpy as np
    from matplotlib.figure import Figure

    rows = _plot_rows(summary, metric)
    higher_better = METRICS[metric].higher_is_better
    # stable: ties keep the summary's order
    rows = rows.sort_values(f"{metric}_mean", ascending=not higher_better, kind="stable")
    means = rows[f"{metric}_mean"].to_numpy(float)
    low, high, used_std = _interval(rows, metric)
    labels = _row_labels(rows)
    groups = _groups(rows)
    n = len(rows)
    positions = np.arange(n)

    fig = Figure(figsize=(7.0, 1.3 + 0.32 * n), layout="constrained")
    ax = fig.add_subplot()
    ax.hlines(positions, low, high, colors="#4d4d4d", linewidth=1.6, gid="interval")
    colors = [BEST_GROUP_COLOR if g in (None, 1) else OTHER_GROUP_COLOR for g in groups]
    ax.scatter(means, positions, c=colors, s=36, zorder=3, gid="mean")
    outside = far_outliers(means)
    if outside.any():  # e.g. chance-level layer-0 rows of a sweep: keep the rest readable
        _clip_outliers(ax, means, low, high, outside, positions, colors)
    ax.set_yticks(positions, labels)
    ax.set_ylim(n - 0.5, -0.5)  # best at the top
    ax.grid(axis="x", color="#e6e6e6", linewidth=0.8)
    ax.set_axisbelow(True)
    for y, mean, group in zip(positions, means, groups):
        tag = f"  [g{group}]" if group is not None else ""
        # a value column just right of the axes: never collides with a whisker
        ax.text(1.02, y, f"{mean:.3f}{tag}", transform=ax.get_yaxis_transform(),
                va="center", ha="left", fontsize=9, gid="value")
    handles = _majority_line(ax, majority)
    ax.set_xlabel(_x_label(rows, metric, used_std)
                  + ("\n◂ ▸: far beyond the others, off the axis (values at right)"
                     if outside.any() else ""))
    title = title or metric
    ax.set_title(title, fontsize=11 if len(title) <= 64 else 9)  # long names still fit
    _legend(fig, handles, groups, disagreement(low, high, groups, used_std))
    return fig


def _clip_outliers(ax, means, low, high, outside, positions, colors) -> None:
    """The x axis fitted to the rows that are not ``outside``; those drawn as arrows at the
    edge they lie beyond."""
    import numpy as np

    inside = ~outside
    left, right = low[inside].min(), high[inside].max()
    pad = 0.05 * (right - left) or 0.01
    ax.set_xlim(left - pad, right + pad)
    left, right = ax.get_xlim()
    for beyond, edge, marker in (((means < left) & outside, left, "<"),
                                 ((means > right) & outside, right, ">")):
        if beyond.any():
            ax.scatter(np.full(beyond.sum(), edge), positions[beyond], marker=marker,
                       s=40, c=[colors[i] for i in np.flatnonzero(beyond)], zorder=4,
                       clip_on=False, gid="outside")


def _majority_line(ax, majority) -> list:
    """The majority-class rate as a dashed line (its legend handle returned), or said at
    the edge it lies beyond: it never stretches the data's limits."""
    import numpy as np
    from matplotlib.lines import Line2D

    if majority is None or not np.isfinite(majority):
        return []
    left, right = ax.get_xlim()
    if left <= majority <= right:
        ax.axvline(majority, color="#9a9a9a", linestyle="--", linewidth=1.0, gid="majority")
        return [Line2D([], [], color="#9a9a9a", linestyle="--",
                       label=f"majority class ({majority:.3f})")]
    below = majority < left  # off the chart: said at the edge it lies beyond
    ax.text(0.005 if below else 0.995, 0.995,
            f"{'◂ ' if below else ''}majority class {majority:.3f}"
            f"{'' if below else ' ▸'}", transform=ax.transAxes, fontsize=7,
            color="#777777", ha="left" if below else "right", va="top", gid="majority")
    return []


def _legend(fig, handles: list, groups, note) -> None:
    """The legend under the chart: the groups' colours, the majority line; ``note`` (only
    with groups, so with a legend) as its title, so the constrained layout makes room."""
    from matplotlib.lines import Line2D

    if any(g is not None for g in groups):
        handles[:0] = [Line2D([], [], marker="o", linestyle="", color=BEST_GROUP_COLOR,
                              label="group 1: not significantly different from the best")]
        if any(g not in (None, 1) for g in groups):
            handles.insert(1, Line2D([], [], marker="o", linestyle="", color=OTHER_GROUP_COLOR,
                                     label="other groups"))
    if handles:
        legend = fig.legend(handles=handles, loc="outside lower center", ncols=len(handles),
                            fontsize=8, frameon=False,
                            title=textwrap.fill(note, 120) if note else None, title_fontsize=7)
        if note:
            legend.get_title().set_gid("note")
            legend.get_title().set_color("#555555")


def far_outliers(values, k: float = 3.0):
    """Which ``values`` lie more than ``k`` interquartile ranges beyond the quartiles
    (Tukey's far-out fence); none when there are fewer than 4 or no spread."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    if values.size < 4:
        return np.zeros(values.size, dtype=bool)
    q1, q3 = np.nanpercentile(values, [25, 75])
    spread = q3 - q1
    if not spread > 0:
        return np.zeros(values.size, dtype=bool)
    return (values < q1 - k * spread) | (values > q3 + k * spread)


def disagreement(low, high, groups, used_std) -> str | None:
    """Why whiskers and groups may seem to disagree, or None when they do not.

    Whiskers are each feature set's own interval; groups come from paired tests
    on the same items, which can separate two feature sets whose own intervals
    overlap (their errors are correlated), and from each group's leader only.
    """
    known = [i for i, g in enumerate(groups) if g is not None and not used_std[i]]
    overlap_apart = same_apart = False
    for x, i in enumerate(known):
        for j in known[x + 1:]:
            overlap = low[i] <= high[j] and low[j] <= high[i]
            overlap_apart |= overlap and groups[i] != groups[j]
            same_apart |= not overlap and groups[i] == groups[j]
    notes = []
    if overlap_apart:
        notes.append("overlapping whiskers in different groups: the paired test compares "
                     "feature sets on the same items, which is more precise than their own "
                     "intervals")
    if same_apart:
        notes.append("separate whiskers in one group: a group holds what is not significantly "
                     "worse than its leader, not what is alike")
    return "note: " + "; ".join(notes) if notes else None


def layer_heatmap(summary, metric: str, title: str | None = None):
    """A ``Figure`` of single-layer poolers × layers coloured by the metric's mean, or None.

    None unless the finished single-layer rows span more than one layer. Rows that
    combine layers ("1+6") and failed rows are left out; a missing cell is NaN
    (masked, drawn grey). Layers run in numeric order, poolers best first by their
    best layer. Brighter is better for every metric (the colour map flips for
    lower-is-better ones).
    """
    import numpy as np
    from matplotlib.figure import Figure

    grid = layer_grid(summary, metric)
    if grid is None:
        return None
    higher_better = METRICS[metric].higher_is_better
    values = np.ma.masked_invalid(grid.to_numpy(float))
    n_poolers, n_layers = grid.shape

    import matplotlib

    cmap = matplotlib.colormaps["viridis" if higher_better else "viridis_r"].with_extremes(bad="#e0e0e0")
    fig = Figure(figsize=(1.6 + 0.75 * n_layers + 1.2, 1.4 + 0.45 * n_poolers), layout="constrained")
    ax = fig.add_subplot()
    cells = grid.to_numpy(float).ravel()
    known = cells[~np.isnan(cells)]
    far = far_outliers(known)
    limits, extend = {}, "neither"
    if far.any():  # far-off cells (chance-level layer 0) take the end colour, not the scale
        limits = {"vmin": known[~far].min(), "vmax": known[~far].max()}
        below, above = (known < limits["vmin"]).any(), (known > limits["vmax"]).any()
        extend = "both" if below and above else "min" if below else "max"
    image = ax.imshow(values, cmap=cmap, aspect="auto", interpolation="nearest", **limits)
    ax.set_xticks(range(n_layers), [str(c) for c in grid.columns])
    ax.set_yticks(range(n_poolers), list(grid.index))
    ax.set_xlabel("layer (hidden-state index; 0 = embeddings)")
    ax.set_ylabel("pooler")
    ax.set_title(title or f"{metric} by layer", fontsize=11)
    for (i, j), value in np.ndenumerate(grid.to_numpy(float)):
        if math.isnan(value):
            continue
        r, g, b, _ = cmap(image.norm(value))
        dark_cell = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
        ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=8,
                color="white" if dark_cell else "black")
    direction = "higher" if higher_better else "lower"
    fig.colorbar(image, ax=ax, label=f"{metric} mean ({direction} is better)", extend=extend)
    return fig


def layer_grid(summary, metric: str):
    """The heat map's data: a DataFrame, single-layer poolers × int layers, or None.

    Cells are ``<metric>_mean`` of finished rows, NaN where a pooler has no finished
    row at that layer; None when the single-layer rows span fewer than two layers.
    """
    rows = _plot_rows(summary, metric)
    rows = rows[_encoder(rows) == "frozen"]  # a fine-tuned encoder is pooled at one layer
    rows = rows.assign(pooler=[f"{m}: {p}" if m else p
                               for m, p in zip(_model(rows), rows["pooler"].astype(str))])
    layers = _layer_text(rows)
    single = layers.str.fullmatch(r"\d+").fillna(False).astype(bool)
    rows = rows[single].assign(layer=layers[single].astype(int))
    if rows["layer"].nunique() < 2:
        return None
    grid = rows.pivot(index="pooler", columns="layer", values=f"{metric}_mean")
    grid = grid.reindex(columns=sorted(grid.columns))
    best = grid.max(axis=1) if METRICS[metric].higher_is_better else -grid.min(axis=1)
    order = best.sort_values(ascending=False, kind="stable").index
    grid = grid.loc[order]
    grid.columns.name = "layer"
    return grid


def _check_metric(metric: str) -> list[str]:
    if metric == "all":
        return list(METRICS)
    if metric not in METRICS:
        raise PoolkitError(f"unknown metric '{metric}'; use one of {', '.join(METRICS)} or all")
    return [metric]


def _check_formats(formats) -> list[str]:
    if isinstance(formats, str):
        formats = formats.split(",")
    formats = [f.strip().lower().lstrip(".") for f in formats if f.strip()]
    unknown = [f for f in formats if f not in PLOT_FORMATS]
    if unknown or not formats:
        shown = f"'{unknown[0]}'" if unknown else "(none given)"
        raise PoolkitError(f"unknown plot format {shown}; use one or more of {', '.join(PLOT_FORMATS)}")
    return list(dict.fromkeys(formats))


def _saver(figure, fmt: str):
    """A writer of ``figure`` as ``fmt`` into a file object, with no dates or random ids
    in the file (SVG and PDF come out byte-identical for the same summary)."""
    import matplotlib

    metadata = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}.get(fmt)

    def save(handle):
        with matplotlib.rc_context({"svg.hashsalt": "poolkit"}):
            figure.savefig(handle, format=fmt, dpi=150, metadata=metadata)

    return save


def _ok(summary):
    if "status" not in summary:
        return summary["pooler"].notna()
    return summary["status"].fillna("ok").astype(str).eq("ok")


def _plot_rows(summary, metric: str):
    """Finished rows with a value of ``metric``."""
    column = f"{metric}_mean"
    if column not in summary:
        return summary.iloc[0:0]
    return summary[_ok(summary) & summary[column].notna()]


def _layer_text(rows):
    """The ``layer`` column as text: "6" whether pandas read 6, 6.0 or "6"; NaN kept."""
    import pandas as pd

    if "layer" not in rows:
        return pd.Series(pd.NA, index=rows.index, dtype="string")

    def text(value):
        if isinstance(value, float) and math.isnan(value) or value is None or value is pd.NA:
            return pd.NA
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value).strip()

    return rows["layer"].map(text).astype("string")


def _row_labels(rows) -> list[str]:
    layers = _layer_text(rows)
    distinct = set(layers.dropna())
    labels = list(rows["pooler"].astype(str)) if len(distinct) <= 1 else [
        p if _isna(l) else f"{p} @ {l}" for p, l in zip(rows["pooler"].astype(str), layers)]
    return [(f"{model}: " if model else "") + (f"{label} (fine-tuned)" if encoder == "finetuned"
                                               else label)
            for label, encoder, model in zip(labels, _encoder(rows), _model(rows))]


def _isna(value) -> bool:
    import pandas as pd

    return bool(pd.isna(value))


def _groups(rows) -> list[int | None]:
    if "group" not in rows:
        return [None] * len(rows)
    return [None if _isna(g) else int(g) for g in rows["group"]]


def _interval(rows, metric: str):
    """Whisker ends per row: the 95% interval, else mean ± std; and which rows fell back."""
    import numpy as np

    mean = rows[f"{metric}_mean"].to_numpy(float)
    nan = np.full(len(rows), np.nan)
    low = rows[f"{metric}_ci_low"].to_numpy(float) if f"{metric}_ci_low" in rows else nan
    high = rows[f"{metric}_ci_high"].to_numpy(float) if f"{metric}_ci_high" in rows else nan
    std = rows[f"{metric}_std"].to_numpy(float) if f"{metric}_std" in rows else nan
    used_std = np.isnan(low) | np.isnan(high)
    spread = np.nan_to_num(std, nan=0.0)
    low = np.where(used_std, mean - spread, low)
    high = np.where(used_std, mean + spread, high)
    return low, high, used_std


def _x_label(rows, metric: str, used_std) -> str:
    direction = "higher" if METRICS[metric].higher_is_better else "lower"
    seeds = sorted({int(s) for s in rows["seeds"].dropna()}) if "seeds" in rows else []
    if not seeds:
        over = "mean over seeds"
    elif len(seeds) == 1:
        over = f"mean over {seeds[0]} seed{'s' if seeds[0] != 1 else ''}"
    else:
        over = f"mean over {seeds[0]}–{seeds[-1]} seeds"
    if used_std.all():
        whiskers = "± std (no 95% interval)"
    elif used_std.any():
        whiskers = "95% interval over items and seeds (± std where none)"
    else:
        whiskers = "95% interval over items and seeds"
    return f"{metric} ({direction} is better): {over}, {whiskers}"


def _settings(run_dir: Path) -> dict:
    """settings.json of ``run_dir``, or {} when it is missing or unreadable."""
    try:
        settings = json.loads((run_dir / "settings.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return settings if isinstance(settings, dict) else {}


def _title_suffix(settings: dict) -> str:
    """" — <model> on <data>, <protocol>" from a run's settings ("" from {}, what
    :func:`_settings` gives for a missing or unreadable settings.json)."""
    model, data = settings.get("model"), settings.get("data")
    protocol, folds = settings.get("protocol"), settings.get("folds")
    parts = []
    if model:
        parts.append(_short_name(str(model)))
    if data:
        parts.append(f"on {_short_name(str(data))}")
    if isinstance(folds, int) and not isinstance(folds, bool):
        how = f"{folds}-fold cross-fitted" if folds > 1 else "one test split"
        named = protocol if isinstance(protocol, str) and protocol != "default" else None
        parts[-1:] = [f"{parts[-1]}," if parts else "", f"{named} ({how})" if named else how]
    return f" — {' '.join(p for p in parts if p)}" if parts else ""


def _short_name(name: str) -> str:
    # A local path shows as its last part; a hub id like "org/model" stays whole.
    if name.startswith(("/", ".", "~")) or os.sep != "/" and os.sep in name or Path(name).exists():
        return Path(name).name or name
    return name


def plot_suite(suite_dir, formats=("png", "svg"), out_dir=None) -> list[Path]:
    """Write a suite directory's charts and return the paths written: ``cd.<fmt>``, the
    critical-difference diagram of the feature sets' mean ranks, and ``forest.<fmt>``,
    each chosen pair's per-task differences with their intervals and the pooled one
    (see :func:`poolkit.evaluation.across.chosen_pairs`). Files go to ``out_dir``, default
    ``SUITE_DIR/plots``."""
    formats = _check_formats(formats)
    suite_dir = Path(suite_dir)
    verdict = read_verdict(suite_dir)
    if len(verdict.ranks) < 2:
        raise PoolkitError(f"nothing to plot in '{suite_dir}': fewer than two feature sets "
                           "finished on every task")
    figures = [("cd", critical_difference_diagram(verdict)), ("forest", forest_plot(verdict))]
    contents = {f"{stem}.{fmt}": _saver(figure, fmt) for stem, figure in figures for fmt in formats}
    return _write_charts(suite_dir, contents, out_dir)


def _write_charts(run_dir: Path, contents: dict, out_dir) -> list[Path]:
    """``contents`` into ``out_dir``, or into ``run_dir/plots`` recorded as the run
    directory's own files (the next run removes them as stale)."""
    run = RunDirectory(run_dir)
    if out_dir is None and run.files() is not None:
        run.write({f"plots/{name}": save for name, save in contents.items()}, replace=False)
        return [run_dir / "plots" / name for name in contents]
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "plots"
    for name in contents:
        refuse_owned(out_dir / name, "--out-dir")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, save in contents.items():
            write_atomic(out_dir / name, save)
    except OSError as exc:
        raise PoolkitError(f"cannot write plots to '{out_dir}': {exc.strerror or exc}") from None
    return [out_dir / name for name in contents]


def critical_difference_diagram(verdict):
    """A ``Figure``: Demšar's critical-difference diagram. Each feature set sits at its
    mean rank over the tasks (1 = best, on the left); a thick bar joins sets whose mean
    ranks differ by less than Nemenyi's critical difference (drawn above the axis):
    those are not significantly different."""
    from matplotlib.figure import Figure

    ranks = verdict.ranks
    names, means = list(ranks["set"]), ranks["mean_rank"].to_numpy(float)
    k, cd = len(names), verdict.friedman.get("cd", math.nan)
    half = (k + 1) // 2
    fig = Figure(figsize=(8.0, 2.2 + 0.28 * half), layout="constrained")
    ax = fig.add_subplot()
    ax.set_xlim(0.5, k + 0.5)
    rows = half + 1
    ax.set_ylim(rows + 0.6, -1.6)
    ax.axis("off")
    ax.hlines(0, 1, k, color="black", linewidth=1.0)
    for tick in range(1, k + 1):
        ax.vlines(tick, -0.15, 0, color="black", linewidth=1.0)
        ax.text(tick, -0.3, str(tick), ha="center", va="bottom", fontsize=9)
    if math.isfinite(cd):
        ax.hlines(-1.1, 1, 1 + cd, color="black", linewidth=1.5, gid="cd")
        ax.vlines([1, 1 + cd], -1.2, -1.0, color="black", linewidth=1.0)
        ax.text(1 + cd / 2, -1.25, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=9)
    for i, (name, mean) in enumerate(zip(names, means)):
        left = i < half
        depth = (i if left else k - 1 - i) + 1
        edge = 0.6 if left else k + 0.4
        ax.plot([mean, mean, edge], [0, depth, depth], color="#333333", linewidth=0.9)
        ax.text(edge + (-0.05 if left else 0.05), depth,
                f"{name} ({mean:.2f})", ha="right" if left else "left", va="center",
                fontsize=9)
    cliques = []
    if math.isfinite(cd):
        for i in range(k):
            j = max(j for j in range(i, k) if means[j] - means[i] <= cd)
            if j > i and not any(a <= i and j <= b for a, b in cliques):
                cliques.append((i, j))
    for level, (i, j) in enumerate(cliques):
        y = 0.35 + 0.22 * level
        ax.hlines(y, means[i] - 0.03, means[j] + 0.03, color="#d62728", linewidth=3.0,
                  gid="clique")
    tasks = verdict.friedman.get("tasks")
    ax.set_title(textwrap.fill(
        f"Mean rank of {verdict.metric} over {tasks} tasks (1 = best); bars join sets not "
        f"significantly different (Nemenyi, alpha {verdict.friedman.get('alpha')}; Friedman "
        f"{format_p(verdict.friedman.get('p'))})", 100), fontsize=9)
    return fig


def _pooled_diamond(ax, row, y: float, metric: str, scale: float) -> str:
    """Draw one pair's pooled difference at ``y`` (a diamond over its interval, coloured by
    its decision) and its prediction interval for a new task; return its label."""
    from matplotlib.patches import Polygon

    pooled = getattr(row, f"{metric}_diff") * scale
    low, high = getattr(row, f"{metric}_low") * scale, getattr(row, f"{metric}_high") * scale
    decision = row.decision if isinstance(row.decision, str) else "inconclusive"
    color = (BEST_GROUP_COLOR if "better" in decision else
             EQUIVALENT_COLOR if decision == "equivalent" else OTHER_GROUP_COLOR)
    if not math.isnan(row.new_task_low):
        ax.hlines(y + 0.3, scale * row.new_task_low, scale * row.new_task_high, color=color,
                  linewidth=0.8, gid="prediction")
    ax.add_patch(Polygon([(low, y), (pooled, y - 0.35), (high, y), (pooled, y + 0.35)],
                         closed=True, color=color, gid="pooled"))
    p = row.p_equivalent_holm if decision == "equivalent" else getattr(row, f"{metric}_p_holm")
    test = "equivalence Holm" if decision == "equivalent" else "Holm"
    return f"    pooled: {decision} ({test} {format_p(p)}, I² {100 * row.i2:.0f}%)"


def forest_plot(verdict):
    """A ``Figure``: for each pair :func:`~poolkit.evaluation.across.chosen_pairs` picks, its
    difference a − b on every task (dot, the task's 95% paired-bootstrap interval), the
    pooled random-effects difference (diamond, its Hartung–Knapp 95% interval, coloured by
    its decision) and the 95% prediction interval for a new task (a thin bar under it),
    over the region of practical equivalence (a shaded band, ±ROPE)."""
    from matplotlib.figure import Figure

    metric = verdict.metric
    scale = 1.0 if metric == "log_loss" else 100.0
    per_task = verdict.task_pairs
    chosen = chosen_pairs(verdict)
    labels, y = [], 0
    height = sum(len(verdict.tasks) + 2 for _ in chosen)
    fig = Figure(figsize=(8.0, 1.2 + 0.22 * height), layout="constrained")
    ax = fig.add_subplot()
    ticks = []
    for prefix, row in chosen:
        labels.append((y, f"{prefix}{row.a} − {row.b}", True))
        ticks.append(y)
        y += 1
        rows = per_task[(per_task["a"] == row.a) & (per_task["b"] == row.b)]
        for task in rows.itertuples(index=False):
            task = task._asdict()
            diff = scale * task[f"{metric}_diff"]
            ax.hlines(y, scale * task[f"{metric}_low"], scale * task[f"{metric}_high"],
                      color="#4d4d4d", linewidth=1.2, gid="task-interval")
            ax.scatter([diff], [y], s=18, color="#4d4d4d", zorder=3)
            labels.append((y, f"    {task['task']}", False))
            ticks.append(y)
            y += 1
        labels.append((y, _pooled_diamond(ax, row, y, metric, scale), False))
        ticks.append(y)
        y += 1
    ax.axvline(0, color="#9a9a9a", linewidth=1.0, linestyle="--")
    ax.axvspan(-scale * verdict.rope, scale * verdict.rope, color=EQUIVALENT_COLOR, alpha=0.15,
               linewidth=0, gid="rope")
    ax.set_yticks([t for t, _, _ in labels], [text for _, text, _ in labels], fontsize=8)
    for tick, (_, _, header) in zip(ax.get_yticklabels(), labels):
        tick.set_fontweight("bold" if header else "normal")
    ax.set_ylim(y - 0.5, -0.5)
    ax.grid(axis="x", color="#e6e6e6", linewidth=0.8)
    ax.set_axisbelow(True)
    unit = "" if metric == "log_loss" else " (points)"
    better = "higher" if METRICS[metric].higher_is_better else "lower"
    ax.set_xlabel(textwrap.fill(
        f"difference in {metric}{unit}, a − b ({better} is better for a): dots per task with "
        "95% intervals; diamonds pooled over tasks (random effects, Hartung–Knapp 95%): blue "
        "better, green practically equivalent, grey inconclusive; the thin bar under each, the "
        f"95% prediction interval for a new task; shaded, the ROPE "
        f"({rope_words(metric, verdict.rope)})", 70), fontsize=8)
    return fig

