"""The ``poolkit`` command line: the group, its list of commands and one-line errors.

The commands live in :mod:`poolkit.commands`, which imports the whole library; this
module names them with their one-line help, so ``poolkit --help`` lists them without
importing it, and loads it for the command that runs.
"""

import importlib
import os

import click

from poolkit.errors import Interrupted, PoolkitError, one_line

#: Exit code after Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130

#: Each command (a function of :mod:`poolkit.commands`) and its summary, shortened to fit
#: ``poolkit --help`` as click shortens a command's own help; a test holds each to the
#: command's help.
COMMANDS = {
    "export": "Export a run's table as csv, md, latex, json, html.",
    "export-model": "Write a finished run's feature set (encoder, pooler, final head) as a model "
                    "that transformers or sentence-transformers load without poolkit, its label "
                    "names inside.",
    "plot": "Chart a run's summary: a dot chart per metric, a heat map over layers.",
    "plugins": "List every registered pooler and the plugin that registered it.",
    "predict": "Label new texts with a finished run's feature set and its final head (trained on "
               "all the run's items on first use, then kept in RUN_DIR/heads): each text's "
               "predicted label and p_<label> columns in labels.json order.",
    "run": "Encode once, pool with every pooler, train a head per pooler × seed, compare.",
    "suite": "Run every task of a suite (default: the embedded one) and one verdict across them.",
}


class PoolkitGroup(click.Group):
    """Loads a command when it runs; turns errors into one line at the CLI edge
    (``--debug`` shows tracebacks)."""

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        return getattr(importlib.import_module("poolkit.commands"), name.replace("-", "_"))

    def format_commands(self, ctx, formatter):
        limit = formatter.width - 6 - max(map(len, COMMANDS))
        with formatter.section("Commands"):
            formatter.write_dl([(name, click.Command(name, help=summary).get_short_help_str(limit))
                                for name, summary in COMMANDS.items()])

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


@click.group(cls=PoolkitGroup)
@click.version_option(package_name="poolkit")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def cli(debug):
    """Compare ways of pooling a BERT encoder's token states for classification.

    Exit codes: 0 success, 1 an error (one line says what), 2 a usage error,
    3 some poolers or plugins failed (the others' results were written).
    """


def main():
    cli()
