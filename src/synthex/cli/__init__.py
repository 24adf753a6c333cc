"""The ``synthex`` command: a thin Typer app with one sub-command group per stage.

Each command parses its input, calls one library function and prints the result. Errors
are printed as one line by :mod:`synthex.cli.boundary` (exit status 2).
"""
from __future__ import annotations

import logging
import sys

import typer

from synthex import __version__
from synthex.cli import data as data_cli
from synthex.cli import evaluate as evaluate_cli
from synthex.cli import gan as gan_cli
from synthex.cli import generate as generate_cli
from synthex.cli import note as note_cli
from synthex.cli import phantom as phantom_cli
from synthex.cli import report as report_cli
from synthex.cli import search as search_cli
from synthex.cli import train as train_cli
from synthex.cli import ui as ui_cli
from synthex.cli.boundary import BoundaryGroup, report, show_tracebacks
from synthex.cli.boundary import click_exceptions as _cx

app = typer.Typer(
    cls=BoundaryGroup,
    name="synthex",
    help="SynTheX-Ray: clinical text -> synthetic chest X-rays. For research, not diagnosis.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(data_cli.app, name="data")
app.add_typer(phantom_cli.app, name="phantom")
app.add_typer(train_cli.app, name="train")
app.add_typer(search_cli.app, name="search")
app.add_typer(gan_cli.app, name="gan")
generate_cli.register(app)
note_cli.register(app)
report_cli.register(app)
ui_cli.register(app)
evaluate_cli.register(app)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
) -> None:
    show_tracebacks(verbose)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )


@app.command()
def version() -> None:
    """Print the SynTheX-Ray version."""
    typer.echo(__version__)


def run(typer_app: typer.Typer) -> None:
    """Run a Typer app; errors read as one line (see :mod:`synthex.cli.boundary`)."""
    try:
        typer_app()
    except BaseException as err:  # noqa: BLE001 - errors raised before a command starts
        if isinstance(err, SystemExit):
            raise
        if isinstance(err, _cx.Exit):
            sys.exit(err.exit_code)
        if isinstance(err, _cx.ClickException):
            err.show()
            sys.exit(err.exit_code)
        sys.exit(report(err))


def main() -> None:
    """Console-script entry point."""
    run(app)
