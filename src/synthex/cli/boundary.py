"""The one error boundary of the ``synthex`` command.

Every Typer app of the CLI is built with :class:`BoundaryGroup`, so the same failures read the
same way whether a command runs from the console script, ``python -m`` or a test's CliRunner:

- a :class:`~synthex.errors.SynthexError` (bad input, named with its fix) is printed as one line;
- an ``OSError`` (full disk, read-only or missing folder, permission) names the path and says
  "free space or choose another --out";
- running out of memory says which knobs lower the memory;
- Ctrl-C says the work done so far is kept where the command checkpoints.

All of these exit with status 2 (130 for Ctrl-C) and no traceback. Anything else is a bug in
synthex: one line saying so, and the traceback with ``synthex --verbose`` or
``SYNTHEX_TRACEBACK=1``.
"""
from __future__ import annotations

import os
from typing import Any

import typer
from typer.core import TyperGroup



class _ClickExceptions:
    """The click exceptions that are not errors (help, exit, usage), reached through typer's
    public names: recent typer vendors its own click."""

    Exit = typer.Exit
    Abort = typer.Abort
    ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


_cx = _ClickExceptions

from synthex.errors import describe_os_error, explain

click_exceptions = _cx
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
_show_traceback = False


def show_tracebacks(on: bool) -> None:
    """Let unexpected errors through with their traceback (``synthex --verbose``)."""
    global _show_traceback
    _show_traceback = on


def message_for(err: BaseException) -> tuple[str, int] | None:
    """The line to print and the exit status for an error the boundary handles, else None."""
    if isinstance(err, KeyboardInterrupt):
        return ("interrupted; what was finished is kept: rerun the same command (with --resume where "
                "it has one) to continue"), EXIT_INTERRUPTED
    text = explain(err)
    return None if text is None else (f"error: {text}", EXIT_ERROR)


def report(err: BaseException) -> int:
    """Print the boundary's line for ``err`` and return the exit status (or re-raise a bug)."""
    handled = message_for(err)
    if handled is None:
        if _show_traceback or os.environ.get("SYNTHEX_TRACEBACK"):
            raise err
        typer.secho(f"internal error (a bug in synthex): {type(err).__name__}: {err}", fg=typer.colors.RED,
                    err=True)
        typer.secho("run again with 'synthex --verbose ...' for the traceback and please report it",
                    err=True)
        return 1
    text, status = handled
    typer.secho(text, fg=typer.colors.RED if status == EXIT_ERROR else None, err=True)
    return status


class BoundaryGroup(TyperGroup):
    """A Typer group whose commands fail with one line instead of a traceback."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (_cx.Exit, _cx.Abort, _cx.ClickException):
            raise
        except BaseException as err:  # noqa: BLE001 - this is the boundary
            if isinstance(err, SystemExit) or ctx.parent is not None:
                raise  # a nested group: the root reports
            ctx.exit(report(err))


__all__ = ["BoundaryGroup", "click_exceptions", "describe_os_error", "message_for", "report", "show_tracebacks"]
