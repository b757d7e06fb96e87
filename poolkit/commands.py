"""The ``poolkit`` commands: each parses its options, calls the library, prints.

:mod:`poolkit.cli` loads this module when a command runs (not for ``poolkit --help``)."""

import dataclasses
import os
import shutil
import sys
from pathlib import Path

import click

from poolkit.api import suite as run_suite
from poolkit.config import RunConfig
from poolkit.data.readers import read_texts
from poolkit.errors import PoolkitError
from poolkit.evaluation.decisions import rope_words
from poolkit.evaluation.metrics import METRICS, PRIMARY
from poolkit.files import check_output, write_output
from poolkit.identity import RunIdentity
from poolkit.options import OPTIONS, SUITE_OPTIONS, click_options, comma_list, flag_name
from poolkit.pipeline.results import (
    compact_table,
    display_table,
    frozen_vs_finetuned,
    verdict_sentences,
)
from poolkit.pipeline.stages import run_config
from poolkit.pipeline.suites import dry_run as suite_dry_run
from poolkit.pipeline.suites import read_suite
from poolkit.pooling.manager import collect_poolers, get_plugin_manager
from poolkit.winner.export import EXPORT_TABLES, EXPORTERS, export_run
from poolkit.winner.export_model import export_model as write
from poolkit.winner.final import load, predictions_frame, read_run
from poolkit.winner.plot import plot_run, plot_suite


def _log(message: str) -> None:
    click.echo(message, err=True)


class PluginsFailed(click.ClickException):
    """Some poolers or plugins failed; the others' results were written."""

    exit_code = 3


#: predict's and export-model's --trust-remote-code.
RERUN_REMOTE_CODE = ("Let the run's model run its own code again (a run made with "
                     "--trust-remote-code is refused without it).")

#: The table's legend for a pooler marked "(own)".
OWN = ("(own) = the pooling the model was trained with, as its sentence-transformers "
       "folder says; ")


def _progress() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


@click.command()
@click_options(tuple(OPTIONS))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Run directory. Default: poolkit-runs/<data>-<hash of the options that "
                   "change results>; re-running a command (with other output options too) "
                   "reuses the heads it finished.")
@click.option("--plot", "plot_formats", default=None,
              help="Also draw the comparison into RUN_DIR/plots, e.g. 'png,svg'.")
@click.option("--wide", is_flag=True,
              help="Print every column of the table, however wide (default: what fits the "
                   "terminal; summary.csv always has them all).")
def run(out, plot_formats, wide, **options):
    """Encode once, pool with every pooler, train a head per pooler × seed, compare."""
    config = RunConfig.from_options({**options, "out": out, "progress": _progress()}, flag_name)
    if out is None:
        out = RunIdentity.of(config).folder()
        config = dataclasses.replace(config, out=out)
    result = run_config(config, log=_log)
    if result is None:  # a torchrun rank other than 0: its share of the encoding is done
        return
    _print_run(result, config, wide)
    if plot_formats:
        for path in plot_run(out, formats=comma_list(plot_formats) or ("png",)):
            _log(f"wrote {path}")
    if result.failures or result.plugin_errors:
        failed = ", ".join(result.failures) or "see errors above"
        raise PluginsFailed(f"some poolers or plugins failed ({failed}); others' results are "
                            f"in {out}")


def _print_run(result, config, wide: bool) -> None:
    """The run's table, frozen against fine-tuned if both ran, and the legend."""
    settings = result.settings
    table, hidden = display_table(result.summary, config.metric), []
    if not wide:
        table, hidden = compact_table(table, config.metric,
                                      shutil.get_terminal_size((100, 24)).columns)
    click.echo(table.to_string(index=False))
    if hidden:
        click.echo(f"(also in summary.csv, or printed with --wide: {', '.join(hidden)})")
    side_by_side = frozen_vs_finetuned(result.summary, result.pairs, config.metric)
    if side_by_side is not None:
        click.echo(f"\nFrozen or fine-tuned ({config.metric}; change = finetuned - frozen, "
                   "paired over the same items):")
        click.echo(side_by_side.to_string(index=False))
    scope = (f"{settings['folds']}-fold cross-fitted, every item scored once"
             if settings["folds"] > 1 else "test split")
    verdict = (f"vs baseline: significantly better/worse than {config.baseline} or not"
               if config.baseline else "group: poolers in one group are not significantly worse "
               "than its best")
    verdict += (f"; decision: against the {'baseline' if config.baseline else 'best'}, "
                f"'equivalent' within {rope_words(config.metric, settings['rope'])} (--rope) by "
                "two one-sided tests, 'inconclusive' neither better nor equivalent")
    click.echo(
        f"\n{len(result.results)} results ({scope}: n={settings['scored_items']}), majority-class "
        f"rate {settings['majority_rate']:.3f}; {config.metric}: mean over seeds [95% interval "
        f"over items and seeds]; * = best per metric; "
        f"{OWN if 'own_pooling' in result.summary else ''}{verdict} (paired bootstrap, "
        f"Holm-corrected; every pair and metric in pairs.csv). "
        f"{settings['total_seconds']:.1f}s total (encoder {settings['encode_seconds']:.1f}s, "
        f"pooling {settings['pool_seconds']:.1f}s, heads {settings['train_seconds']:.1f}s). "
        f"Run directory: {config.out}"
    )
    sentences = verdict_sentences(result.summary, config.metric, settings["rope"])
    if sentences:
        click.echo("\n" + " ".join(sentences))


@click.command()
@click.argument("suite_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click_options(SUITE_OPTIONS, suite=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Suite directory (each task's run directory inside it). Default: "
                   "poolkit-runs/suite-<name>-<hash>.")
@click.option("--plot", "plot_formats", default=None,
              help="Also draw the critical-difference diagram and forest plot, e.g. 'png,svg'.")
@click.option("--dry-run", is_flag=True,
              help="Print the tasks it would run (name, source, labels, texts after "
                   "max_texts), one per line, and stop before encoding anything.")
def suite(suite_file, plot_formats, out, dry_run, **options):
    """Run every task of a suite (default: the embedded one) and one verdict across them.

    Each task is an ordinary run in SUITE_DIR/<task>; ranks, Friedman's test with
    Nemenyi's critical difference, and a pooled random-effects effect per pair go
    into SUITE_DIR (suite.csv, ranks.csv, across_pairs.csv). An option not given here
    comes from the suite file's [defaults], else a run's default.
    """
    if dry_run:
        for line in suite_dry_run(read_suite(suite_file), options):
            click.echo(line)
        return
    result = run_suite(suite_file, out=out, log=_log, progress=_progress(), **options)
    if result.verdict is None:  # a torchrun rank other than 0
        return
    verdict = result.verdict
    if len(verdict.ranks):
        click.echo(_ranks_table(verdict).to_string(index=False))
    click.echo(f"\nAcross {len(verdict.tasks)} task(s) ({verdict.metric}; mean rank 1 = best; "
               "pooled: random-effects over the tasks' paired differences, Hartung-Knapp, "
               "Holm over pairs; every pair in across_pairs.csv):")
    for line in result.lines:
        click.echo(f"- {line}")
    click.echo(f"Suite directory: {result.out}")
    if plot_formats:
        for path in plot_suite(result.out, formats=comma_list(plot_formats) or ("png",)):
            _log(f"wrote {path}")
    failed = [f"{task}: {', '.join(run.failures)}" for task, run in result.runs.items()
              if run.failures or run.plugin_errors]
    if result.missing or failed:
        named = ", ".join([*result.missing, *failed])
        raise PluginsFailed(f"some tasks or poolers failed ({named}); the verdict covers what "
                            f"finished, in {result.out}")


def _ranks_table(verdict):
    """ranks.csv as printed: the feature set, its mean rank and average, each task's value."""
    table = verdict.ranks.drop(columns=[c for c in ("model", "pooler", "layer", "encoder",
                                                    "tasks") if c in verdict.ranks])
    return table.assign(**{c: table[c].map(lambda v: f"{v:.3f}")
                           for c in [verdict.metric, *verdict.tasks]},
                        mean_rank=table["mean_rank"].map(lambda v: f"{v:.2f}"))


@click.command()
@click.option("--plugins-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also load every *.py file in this folder as a plugin.")
def plugins(plugins_dir):
    """List every registered pooler and the plugin that registered it."""
    pm = get_plugin_manager(plugins_dir=plugins_dir)
    found = collect_poolers(pm)
    width = max((len(n) for n in found), default=6)
    for name, (pooler, plugin) in found.items():
        click.echo(f"{name:<{width}}  {plugin}")
    for error in pm.load_errors:
        _log(f"error: {error}")
    if pm.load_errors:
        sys.exit(PluginsFailed.exit_code)


@click.command(help=f"Export a run's table as {', '.join(EXPORTERS)}.")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(list(EXPORTERS)), required=True)
@click.option("--table", type=click.Choice(EXPORT_TABLES), default="summary",
              show_default=True, help="summary (per pooler × layer), results (per seed), "
                                      f"pairs (paired tests), grid ({PRIMARY}, pooler x layer), "
                                      "predictions (per test item, "
                                      "with --predictions), recipe (what reproduces the run).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="File to write. Default: standard output.")
def export(run_dir, fmt, table, output):
    if output is not None:
        check_output(output)
    text = export_run(run_dir, fmt, table)
    if output is None:
        click.echo(text, nl=False)
        return
    write_output(output, text)
    _log(f"wrote {output}")


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--set", "set_id", help="Feature set to predict with: an id as results name it "
              "(mean@6, mean@6-ft), or a pooler with one finished set. Default: the run's "
              "best by its primary metric.")
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Texts to label: CSV, TSV, JSONL or Parquet (or a datasets folder).")
@click.option("--text-col", help="Column with the texts. Default: the run's.")
@click.option("--text-pair-col", help="Column with the second texts, for a run on pairs. "
              "Default: the run's.")
@click.option("--encoding", default="utf-8", show_default=True, help="Text encoding of --data.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="CSV file to write. Default: standard output.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="The cache the run used, if not the default one.")
@click.option("--device", help="cpu, cuda, cuda:1 ... Default: cuda when available.")
@click.option("--force", is_flag=True,
              help="Use a pooler whose plugin changed since the run (default: refuse).")
@click.option("--empty-texts", type=OPTIONS["empty_texts"].type, default="error",
              show_default=True, help="Rows whose text is empty or whitespace: stop with an "
              "error naming the first, or leave them out (counted; the others keep their row "
              "numbers).")
@click.option("--trust-remote-code", is_flag=True, help=RERUN_REMOTE_CODE)
def predict(run_dir, set_id, data, text_col, text_pair_col, encoding, output, cache_dir,
            device, force, empty_texts, trust_remote_code):
    """Label new texts with a finished run's feature set and its final head (trained on
    all the run's items on first use, then kept in RUN_DIR/heads): each text's
    predicted label and p_<label> columns in labels.json order."""
    if output is not None:
        check_output(output)
    options = read_run(run_dir).settings["options"]
    if text_pair_col is not None and options.get("text_pair_col") is None:
        raise PoolkitError(f"--text-pair-col {text_pair_col}: run '{run_dir}' was on single "
                           "texts, and its model labels single texts: leave --text-pair-col out")
    texts, rows = read_texts(data, text_col or options.get("text_col", "text"), encoding,
                             text_pair_col or options.get("text_pair_col"), empty_texts, _log)
    classifier = load(run_dir, set_id, cache_dir=cache_dir, device=device, force=force,
                      trust_remote_code=trust_remote_code, log=_log)
    frame = predictions_frame(classifier, texts, rows)
    _log("labels: " + ", ".join(f"{i}={n}" for i, n in enumerate(classifier.classes_)))
    text = frame.to_csv(index=False)
    if output is None:
        click.echo(text, nl=False)
        return
    write_output(output, text)
    _log(f"wrote {len(frame)} predictions of {classifier.set_id} to {output}")


@click.command("export-model")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--set", "set_id", help="Feature set to export (mean@6, bert_pooler@6-ft, or a "
              "pooler with one finished set). Default: the run's best by its primary metric.")
@click.option("-o", "--out", "out", required=True, type=click.Path(path_type=Path),
              help="New (or empty) folder to write the model into.")
@click.option("--format", "fmt", type=click.Choice(["hf", "sentence-transformers"]),
              default="hf", show_default=True,
              help="hf: a transformers folder (bert_pooler on a BERT's last layer is "
                   "BertForSequenceClassification); sentence-transformers: Transformer, "
                   "Pooling and a Dense head, for cls, mean, max, mean_sqrt_len, "
                   "weighted_mean, last_token on the last layer.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="The cache the run used, if not the default one.")
@click.option("--force", is_flag=True,
              help="Use a pooler whose plugin changed since the run (default: refuse).")
@click.option("--trust-remote-code", is_flag=True, help=RERUN_REMOTE_CODE)
def export_model(run_dir, set_id, out, fmt, cache_dir, force, trust_remote_code):
    """Write a finished run's feature set (encoder, pooler, final head) as a model that
    transformers or sentence-transformers load without poolkit, its label names inside."""
    write(run_dir, set_id, out, fmt, cache_dir=cache_dir, force=force,
          trust_remote_code=trust_remote_code, log=_log)


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--metric", default=PRIMARY, show_default=True,
              help=f"{', '.join(METRICS)}, or all (one chart each).")
@click.option("--format", "formats", default="png,svg", show_default=True,
              help="Comma-separated image formats: png, svg, pdf.")
@click.option("-o", "--out-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the charts. Default: RUN_DIR/plots.")
def plot(run_dir, metric, formats, out_dir):
    """Chart a run's summary: a dot chart per metric, a heat map over layers. Of a suite
    directory: its critical-difference diagram and forest plot."""
    if (run_dir / "suite.json").is_file():
        paths = plot_suite(run_dir, formats=comma_list(formats) or (), out_dir=out_dir)
    else:
        paths = plot_run(run_dir, metric=metric, formats=comma_list(formats) or (),
                         out_dir=out_dir)
    for path in paths:
        _log(f"wrote {path}")

