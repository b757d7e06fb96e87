"""``poolkit plot``: charts of a run directory's summary, checked by their plotted data.

The run directories are written by hand in the summary.csv format: one row per
feature set (pooler × layer) with mean, std and 95% interval per metric, a
significance group and a status.
"""

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
from conftest import invoke, modules_after_help, one_error_line, write_owned

from poolkit.errors import PoolkitError
from poolkit.evaluation.metrics import METRICS
from poolkit.winner.plot import dot_chart, layer_grid, layer_heatmap, plot_run, read_summary

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def summary_row(pooler, layer, accuracy, *, seeds=3, group=1, half_width=0.03, std=0.02):
    """One finished summary row; every metric derived from ``accuracy`` so each differs."""
    row = {"pooler": pooler, "layer": layer, "plugin": f"poolkit.plugins.{pooler}", "dim": 32,
           "seeds": seeds}
    for i, metric in enumerate(METRICS):
        # log_loss falls as accuracy rises, like real runs: the best row is the same either way
        mean = 1.5 - accuracy if metric == "log_loss" else accuracy - 0.01 * i
        row[f"{metric}_mean"] = mean
        row[f"{metric}_std"] = std
        row[f"{metric}_ci_low"] = mean - half_width - 0.001 * i  # asymmetric: low and high
        row[f"{metric}_ci_high"] = mean + half_width             # are checked on their own
    row["group"] = group
    row["status"] = "ok"
    return row


def failed_row(pooler, layer):
    return {"pooler": pooler, "layer": layer, "plugin": f"poolkit.plugins.{pooler}",
            "status": "failed: CUDA out of memory"}


def write_run(path, rows, settings=None):
    """A run folder as poolkit writes one, holding a summary of ``rows`` and ``settings``."""
    settings = settings or {"model": "/models/tiny-bert", "data": "/data/reviews.csv",
                            "layers": [6], "num_layers": 6}
    return write_owned(path, {"summary.csv": pd.DataFrame(rows).to_csv(index=False),
                              "settings.json": json.dumps(settings, indent=2) + "\n"})


SINGLE_ROWS = [  # one layer: accuracy order is mean, cls, max, bert_pooler
    summary_row("cls", "6", 0.80),
    summary_row("mean", "6", 0.85),
    summary_row("bert_pooler", "6", 0.70, group=2),
    summary_row("max", "6", 0.75, group=2),
]

# 3 poolers × layers 2, 4, 10 (10 sorts after 4 only as a number), one "1+6" row, max@10 failed
SWEEP_ACCURACY = {
    ("cls", "2"): 0.61, ("cls", "4"): 0.72, ("cls", "10"): 0.83,
    ("mean", "2"): 0.64, ("mean", "4"): 0.86, ("mean", "10"): 0.79,
    ("max", "2"): 0.58, ("max", "4"): 0.69,
}
SWEEP_ROWS = [summary_row(p, layer, acc, group=1 if acc > 0.8 else 2)
              for (p, layer), acc in SWEEP_ACCURACY.items()]
SWEEP_ROWS += [summary_row("concat", "1+6", 0.81), failed_row("max", "10")]


@pytest.fixture
def single_run(tmp_path):
    return write_run(tmp_path / "single-run", SINGLE_ROWS)


@pytest.fixture
def sweep_run(tmp_path):
    return write_run(tmp_path / "sweep-run", SWEEP_ROWS, {
        "model": "bert-base-uncased", "data": "/data/reviews.csv", "layers": [2, 4, 10],
        "num_layers": 12})


def y_labels(fig):
    ax = fig.axes[0]
    ticks = sorted(zip(ax.get_yticks(), (t.get_text() for t in ax.get_yticklabels())))
    top_first = ax.get_ylim()[0] > ax.get_ylim()[1]  # inverted: position 0 is the top row
    assert top_first
    return [text for _, text in ticks]


def whiskers(fig):
    """``{y: (low, high)}`` from the interval LineCollection."""
    (collection,) = [c for c in fig.axes[0].collections if c.get_gid() == "interval"]
    return {seg[0][1]: (seg[0][0], seg[1][0]) for seg in collection.get_segments()}


def dots(fig):
    (collection,) = [c for c in fig.axes[0].collections if c.get_gid() == "mean"]
    return {y: x for x, y in collection.get_offsets()}


def value_texts(fig):
    return [t.get_text() for t in fig.axes[0].texts if t.get_gid() == "value"]


def assert_png(path):
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    height, width = matplotlib.image.imread(path).shape[:2]
    assert width > 300 and height > 150, (path, width, height)
    return height, width


def assert_svg(path):
    root = ET.parse(path).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg", root.tag
    return root


def svg_texts(path):
    """The chart's texts: matplotlib draws glyphs as paths and names each text in a comment."""
    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))
    root = ET.parse(path, parser=parser).getroot()
    return [el.text.strip() for el in root.iter() if el.tag is ET.Comment]


def assert_only_error(result, *culprits):
    """Exit 1 and one line, ``Error: ...``, naming the culprits: nothing else printed."""
    line = one_error_line(result, *culprits)
    assert result.exit_code == 1 and result.output.strip() == line, result.output


# --- the command ---------------------------------------------------------------------------


def test_cli_plot_single_layer_writes_valid_png_and_svg(single_run):
    result = invoke(["plot", single_run])
    assert result.exit_code == 0, result.output
    plots = single_run / "plots"
    expected = [plots / "accuracy.png", plots / "accuracy.svg"]
    assert result.stderr.splitlines() == [f"wrote {p}" for p in expected]
    assert result.stdout == ""
    assert sorted(plots.iterdir()) == sorted(expected)  # one layer: no heat map
    assert_png(plots / "accuracy.png")
    assert_svg(plots / "accuracy.svg")
    texts = svg_texts(plots / "accuracy.svg")
    assert texts.index("mean") < texts.index("cls") < texts.index("max") < texts.index("bert_pooler")
    assert "0.850  [g1]" in texts


@pytest.mark.slow
def test_cli_plot_layer_sweep_writes_heat_map_to_out_dir(sweep_run, tmp_path):
    out = tmp_path / "charts" / "nested"
    result = invoke(["plot", sweep_run, "--metric", "f1_macro", "--format", "png", "-o", out])
    assert result.exit_code == 0, result.output
    expected = [out / "f1_macro.png", out / "f1_macro-layers.png"]
    assert result.stderr.splitlines() == [f"wrote {p}" for p in expected]
    assert sorted(out.iterdir()) == sorted(expected)
    assert not (sweep_run / "plots").exists()
    dot_height, _ = assert_png(out / "f1_macro.png")
    assert_png(out / "f1_macro-layers.png")
    # height grows with the rows: 9 finished feature sets here, 4 in the single-layer run
    single = write_run(tmp_path / "small", SINGLE_ROWS)
    (small_png,) = plot_run(single, "f1_macro", formats=["png"])
    assert dot_height > assert_png(small_png)[0]


@pytest.mark.slow
def test_plot_all_metrics_writes_one_chart_set_per_metric(sweep_run):
    written = plot_run(sweep_run, "all", formats=("svg",))
    names = sorted(p.name for p in written)
    assert names == sorted(f"{m}{suffix}.svg" for m in METRICS for suffix in ("", "-layers"))
    for path in written:
        assert path.parent == sweep_run / "plots"
        assert_svg(path)


@pytest.mark.slow
def test_svg_output_is_byte_identical_across_calls(sweep_run, tmp_path):
    first = plot_run(sweep_run, "accuracy", formats=("svg",), out_dir=tmp_path / "a")
    second = plot_run(sweep_run, "accuracy", formats=("svg",), out_dir=tmp_path / "b")
    assert [p.name for p in first] == ["accuracy.svg", "accuracy-layers.svg"]
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_plot_does_not_change_matplotlib_global_state(single_run):
    import matplotlib

    before = (matplotlib.get_backend(), dict(matplotlib.rcParams))
    plot_run(single_run, "accuracy", formats=("png", "svg"))
    assert (matplotlib.get_backend(), dict(matplotlib.rcParams)) == before


@pytest.mark.slow
def test_plot_runs_without_pyplot_or_a_display(single_run):
    code = ("import sys; from poolkit.winner.plot import plot_run; "
            f"plot_run({str(single_run)!r}, 'accuracy'); "
            "print('matplotlib.pyplot' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_help_does_not_import_matplotlib():
    assert modules_after_help(["plot"], ("matplotlib", "pandas"), ("--metric", "--out-dir")) == "[]"


# --- what the dot chart shows ------------------------------------------------------------------


def test_dot_chart_rows_best_first_with_whiskers_at_the_interval(single_run):
    summary = read_summary(single_run)
    fig = dot_chart(summary, "accuracy")
    assert y_labels(fig) == ["mean", "cls", "max", "bert_pooler"]  # one layer: no "@ 6"
    by_pooler = summary.set_index("pooler")
    for y, pooler in enumerate(y_labels(fig)):
        low, high = whiskers(fig)[y]
        assert low == pytest.approx(by_pooler.loc[pooler, "accuracy_ci_low"])
        assert high == pytest.approx(by_pooler.loc[pooler, "accuracy_ci_high"])
        assert dots(fig)[y] == pytest.approx(by_pooler.loc[pooler, "accuracy_mean"])
    assert value_texts(fig) == ["0.850  [g1]", "0.800  [g1]", "0.750  [g2]", "0.700  [g2]"]
    assert fig.axes[0].get_xlabel().endswith("mean over 3 seeds, 95% interval over items and seeds")


def notes(fig):
    texts = [*fig.texts, *(legend.get_title() for legend in fig.legends)]
    return [t.get_text().replace("\n", " ") for t in texts if t.get_gid() == "note"]


@pytest.mark.slow
def test_dot_chart_draws_the_majority_class_rate_from_the_run(single_run):
    settings = json.loads((single_run / "settings.json").read_text())
    write_owned(single_run, {"settings.json": json.dumps({**settings, "majority_rate": 0.625})})
    plot_run(single_run, "accuracy", formats=("svg",))
    assert any("majority class 0.625" in t for t in svg_texts(single_run / "plots" / "accuracy.svg"))
    fig = dot_chart(read_summary(single_run), "accuracy", majority=0.78)  # among the rows
    (line,) = [x for x in fig.axes[0].lines if x.get_gid() == "majority"]
    assert list(line.get_xdata()) == [0.78, 0.78]
    fig = dot_chart(read_summary(single_run), "accuracy", majority=0.3)  # far below them
    assert fig.axes[0].get_xlim()[0] > 0.6  # the rows' differences are not squeezed
    (text,) = [t for t in fig.axes[0].texts if t.get_gid() == "majority"]
    assert text.get_text() == "◂ majority class 0.300"
    plot_run(single_run, "mcc", formats=("svg",))  # a rate of items: accuracy's chart only
    assert "majority class" not in svg_texts(single_run / "plots" / "mcc.svg")
    write_owned(single_run, {"settings.json": json.dumps({**settings, "majority_rate": "x"})})
    plot_run(single_run, "accuracy", formats=("svg",))  # garbled: no line, no failure
    assert "majority class" not in svg_texts(single_run / "plots" / "accuracy.svg")


def legend_labels(fig):
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def test_dot_chart_legend_lists_other_groups_only_when_there_are_some():
    one_group = [summary_row("mean", "6", 0.85, group=1), summary_row("cls", "6", 0.84, group=1)]
    assert legend_labels(dot_chart(pd.DataFrame(one_group), "accuracy")) == [
        "group 1: not significantly different from the best"]
    two_groups = [summary_row("mean", "6", 0.85, group=1), summary_row("cls", "6", 0.70, group=2)]
    assert legend_labels(dot_chart(pd.DataFrame(two_groups), "accuracy")) == [
        "group 1: not significantly different from the best", "other groups"]


def test_chance_level_rows_do_not_squeeze_the_others(tmp_path):
    """A sweep's layer-0 rows at chance sit off the axis, marked, instead of
    stretching it; the heat map's colour scale ignores them too (extend='min')."""
    rows = [summary_row(p, layer, 0.78 + 0.01 * k, half_width=0.01)
            for k, (p, layer) in enumerate([(p, l) for p in ("cls", "mean") for l in "1234"])]
    rows += [summary_row("cls", "0", 0.50, group=3, half_width=0.01),
             summary_row("mean", "0", 0.51, group=3, half_width=0.01)]
    fig = dot_chart(pd.DataFrame(rows), "accuracy")
    assert fig.axes[0].get_xlim()[0] > 0.7
    (marks,) = [c for c in fig.axes[0].collections if c.get_gid() == "outside"]
    assert len(marks.get_offsets()) == 2
    assert "off the axis" in fig.axes[0].get_xlabel()
    assert value_texts(fig)[-2:] == ["0.510  [g3]", "0.500  [g3]"]  # their values still shown
    heat = layer_heatmap(pd.DataFrame(rows), "accuracy")
    (image,) = heat.axes[0].images
    assert image.norm.vmin == pytest.approx(0.78) and image.colorbar.extend == "min"
    # without far-off rows nothing is clipped
    fig = dot_chart(pd.DataFrame(rows[:-2]), "accuracy")
    assert not [c for c in fig.axes[0].collections if c.get_gid() == "outside"]


def test_dot_chart_says_why_whiskers_and_groups_seem_to_disagree(tmp_path):
    apart = [summary_row("mean", "6", 0.85, group=1), summary_row("cls", "6", 0.70, group=2)]
    assert notes(dot_chart(pd.DataFrame(apart), "accuracy")) == []  # they agree: no note
    overlapping = [summary_row("mean", "6", 0.85, group=1), summary_row("cls", "6", 0.82, group=2)]
    (note,) = notes(dot_chart(pd.DataFrame(overlapping), "accuracy"))
    assert "overlapping whiskers in different groups" in note and "same items" in note
    wide_group = [summary_row("mean", "6", 0.85, group=1, half_width=0.01),
                  summary_row("cls", "6", 0.80, group=1, half_width=0.01)]
    (note,) = notes(dot_chart(pd.DataFrame(wide_group), "accuracy"))
    assert "separate whiskers in one group" in note


def test_dot_chart_title_names_the_protocol(single_run):
    settings = json.loads((single_run / "settings.json").read_text())
    for extra, expected in [({"protocol": "default", "folds": 5}, "tiny-bert on reviews.csv, "
                             "5-fold cross-fitted"),
                            ({"protocol": "mteb", "folds": 1}, "reviews.csv, mteb (one test split)")]:
        write_owned(single_run, {"settings.json": json.dumps({**settings, **extra})})
        plot_run(single_run, "mcc", formats=("svg",))
        assert any(expected in t for t in svg_texts(single_run / "plots" / "mcc.svg")), expected


def test_dot_chart_title_names_metric_model_and_data(single_run):
    plot_run(single_run, "mcc", formats=("svg",))
    assert "mcc — tiny-bert on reviews.csv" in svg_texts(single_run / "plots" / "mcc.svg")
    (single_run / "settings.json").unlink()  # settings are optional: the title is the metric
    plot_run(single_run, "mcc", formats=("svg",), out_dir=single_run / "bare")
    assert "mcc" in svg_texts(single_run / "bare" / "mcc.svg")


def test_dot_chart_sorts_lower_is_better_metric_ascending(single_run):
    summary = read_summary(single_run)
    fig = dot_chart(summary, "log_loss")
    assert y_labels(fig) == ["mean", "cls", "max", "bert_pooler"]
    means = [dots(fig)[y] for y in range(4)]
    assert means == sorted(means)  # smallest loss on top
    assert means[0] == pytest.approx(1.5 - 0.85)
    assert "lower is better" in fig.axes[0].get_xlabel()


def test_dot_chart_labels_pooler_at_layer_and_skips_failed_rows(sweep_run):
    fig = dot_chart(read_summary(sweep_run), "accuracy")
    ranked = sorted(SWEEP_ACCURACY.items(), key=lambda item: -item[1])
    expected = [f"{p} @ {layer}" for (p, layer), _ in ranked]
    expected.insert(2, "concat @ 1+6")  # 0.81, between cls@10 (0.83) and mean@10 (0.79)
    assert y_labels(fig) == expected
    assert "max @ 10" not in y_labels(fig)  # the failed row
    assert len(whiskers(fig)) == len(dots(fig)) == 9


def test_dot_chart_falls_back_to_std_without_an_interval(tmp_path):
    one_seed = [summary_row("cls", "6", 0.80, seeds=1), summary_row("mean", "6", 0.70, seeds=1)]
    run = write_run(tmp_path / "run", one_seed)
    frame = pd.read_csv(run / "summary.csv")
    frame[["accuracy_ci_low", "accuracy_ci_high"]] = np.nan
    frame = frame.drop(columns=["group"])
    fig = dot_chart(frame, "accuracy")
    assert whiskers(fig)[0] == pytest.approx((0.80 - 0.02, 0.80 + 0.02))
    assert whiskers(fig)[1] == pytest.approx((0.70 - 0.02, 0.70 + 0.02))
    label = fig.axes[0].get_xlabel()
    assert "mean over 1 seed," in label and "± std" in label and "items and seeds" not in label
    assert value_texts(fig) == ["0.800", "0.700"]  # no group column: no tags

    frame.loc[0, ["accuracy_ci_low", "accuracy_ci_high"]] = (0.7, 0.9)  # one row has one
    fig = dot_chart(frame, "accuracy")
    assert whiskers(fig)[0] == pytest.approx((0.7, 0.9))
    assert "95% interval over items and seeds (± std where none)" in fig.axes[0].get_xlabel()


def test_dot_chart_reads_integer_layer_column(single_run):
    frame = pd.read_csv(single_run / "summary.csv")  # pandas' own guess: int64
    assert frame["layer"].dtype == np.int64
    assert y_labels(dot_chart(frame, "accuracy")) == ["mean", "cls", "max", "bert_pooler"]
    assert layer_heatmap(frame, "accuracy") is None


# --- what the heat map shows -------------------------------------------------------------------


def heatmap_values(fig):
    (image,) = fig.axes[0].images
    return np.ma.filled(np.ma.asarray(image.get_array(), dtype=float), np.nan)


def tick_texts(labels):
    return [t.get_text() for t in labels]


def test_layer_heatmap_cells_equal_the_summary_pivot(sweep_run):
    summary = read_summary(sweep_run)
    fig = layer_heatmap(summary, "accuracy")
    ax = fig.axes[0]
    layers = tick_texts(ax.get_xticklabels())
    poolers = tick_texts(ax.get_yticklabels())
    assert layers == ["2", "4", "10"]  # numeric order
    assert poolers == ["mean", "cls", "max"]  # best layer first; no "concat" (1+6)
    expected = np.array([[SWEEP_ACCURACY.get((p, layer), np.nan) for layer in layers]
                         for p in poolers])
    np.testing.assert_allclose(heatmap_values(fig), expected)  # NaN where max@10 failed
    assert np.isnan(heatmap_values(fig)[2, 2])
    cell_texts = sorted(t.get_text() for t in ax.texts)
    assert cell_texts == sorted(f"{v:.3f}" for v in SWEEP_ACCURACY.values())
    assert len(fig.axes) == 2  # the colorbar
    assert "higher is better" in fig.axes[1].get_ylabel()


def test_layer_grid_matches_pandas_pivot_for_every_metric(sweep_run):
    summary = read_summary(sweep_run)
    single = summary[(summary["status"] == "ok") & summary["layer"].str.isdigit()]
    for metric in METRICS:
        grid = layer_grid(summary, metric)
        pivot = single.pivot(index="pooler", columns="layer", values=f"{metric}_mean")
        pivot.columns = pivot.columns.astype(int)
        pd.testing.assert_frame_equal(grid, pivot.loc[grid.index, sorted(pivot.columns)],
                                      check_names=False)
        assert np.isnan(grid.loc["max", 10])
        assert "concat" not in grid.index


def test_layer_heatmap_lower_is_better_orders_poolers_by_lowest(sweep_run):
    fig = layer_heatmap(read_summary(sweep_run), "log_loss")
    assert tick_texts(fig.axes[0].get_yticklabels()) == ["mean", "cls", "max"]
    assert np.nanmin(heatmap_values(fig)[0]) == pytest.approx(1.5 - 0.86)
    assert "lower is better" in fig.axes[1].get_ylabel()


def test_no_heat_map_for_one_layer_or_one_layer_plus_combined(tmp_path, single_run):
    assert layer_heatmap(read_summary(single_run), "accuracy") is None
    rows = [summary_row("cls", "6", 0.8), summary_row("concat", "1+6", 0.9),
            failed_row("mean", "4")]  # a failed row's layer does not count
    run = write_run(tmp_path / "run", rows)
    assert layer_heatmap(read_summary(run), "accuracy") is None
    assert [p.name for p in plot_run(run, formats=("png",))] == ["accuracy.png"]


# --- errors ------------------------------------------------------------------------------------


def test_error_not_a_run_dir(tmp_path):
    missing = tmp_path / "not-a-run"
    assert_only_error(invoke(["plot", missing]), str(missing), "summary.csv")
    missing.mkdir()
    assert_only_error(invoke(["plot", missing]), str(missing), "summary.csv")


def test_error_unknown_metric_lists_valid_ones(single_run):
    result = invoke(["plot", single_run, "--metric", "acc"])
    assert_only_error(result, "'acc'", *METRICS, "all")
    assert not (single_run / "plots").exists()


def test_error_unknown_format(single_run):
    assert_only_error(invoke(["plot", single_run, "--format", "png,gif"]), "'gif'", "svg")


def test_error_no_finished_rows(tmp_path):
    run = write_run(tmp_path / "run", [failed_row("cls", "6"), failed_row("mean", "6")])
    assert_only_error(invoke(["plot", run]), str(run / "summary.csv"))
    assert_only_error(invoke(["plot", run, "--metric", "all"]), str(run / "summary.csv"))


def test_error_unwritable_out_dir(single_run, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert_only_error(invoke(["plot", single_run, "-o", blocker / "plots"]), str(blocker))
    usage = invoke(["plot", single_run, "-o", blocker])  # click's own check: a usage error
    assert usage.exit_code == 2 and str(blocker) in usage.output, usage.output
    assert "Traceback" not in usage.output
    assert blocker.read_text() == "not a folder"


def test_errors_from_the_library_are_poolkit_errors(single_run, tmp_path):
    with pytest.raises(PoolkitError, match="not a poolkit run directory"):
        plot_run(tmp_path)
    with pytest.raises(PoolkitError, match="unknown metric 'f1'"):
        plot_run(single_run, "f1")
