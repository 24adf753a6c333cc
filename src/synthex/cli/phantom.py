"""``synthex phantom``: command-line front end of :mod:`synthex.phantom`."""
from __future__ import annotations

import typer

app = typer.Typer(help="phantom stage", no_args_is_help=True)
