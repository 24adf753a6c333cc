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

import errno
import os
import sys
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

from synthex.errors import SynthexError

click_exceptions = _cx
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
_WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG}
_show_traceback = False


def show_tracebacks(on: bool) -> None:
    """Let unexpected errors through with their traceback (``synthex --verbose``)."""
    global _show_traceback
    _show_traceback = on


def describe_os_error(err: OSError) -> str:
    """One line for a failed file operation: the path, the reason, the fix."""
    path = err.filename if err.filename is not None else "a file"
    if err.filename2 is not None:
        path = f"{err.filename} -> {err.filename2}"
    reason = err.strerror or str(err) or type(err).__name__
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"cannot write {path}: {reason}; free space or choose another --out"
    if err.errno in _WRITE_ERRNOS:
        return (f"cannot write {path}: {reason} (a read-only or protected folder); "
                "choose another --out or fix the folder's permissions")
    if isinstance(err, FileNotFoundError) or err.errno == errno.ENOENT:
        return f"{path}: no such file or folder; check the path"
    if isinstance(err, IsADirectoryError):
        return f"{path} is a folder where a file was expected; name a file"
    if isinstance(err, NotADirectoryError):
        return f"{path}: a file sits where a folder was expected; name a folder"
    return f"{path}: {reason}; check the path, free space or choose another --out"


def _is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, MemoryError):
        return True
    oom = getattr(sys.modules.get("torch"), "OutOfMemoryError", None)
    return oom is not None and isinstance(err, oom)


def message_for(err: BaseException) -> tuple[str, int] | None:
    """The line to print and the exit status for an error the boundary handles, else None."""
    if isinstance(err, SynthexError):
        return f"error: {err}", EXIT_ERROR
    if isinstance(err, KeyboardInterrupt):
        return ("interrupted; what was finished is kept: rerun the same command (with --resume where "
                "it has one) to continue"), EXIT_INTERRUPTED
    if _is_out_of_memory(err):
        return ("error: out of memory; lower --batch-size, --resolution / --width / --height or --n, "
                "or close other programs"), EXIT_ERROR
    if isinstance(err, UnicodeDecodeError):
        return (f"error: a text file is not UTF-8 ({err.reason} at byte {err.start}); save it as UTF-8 "
                "and run again"), EXIT_ERROR
    if isinstance(err, OSError):
        return f"error: {describe_os_error(err)}", EXIT_ERROR
    return None


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
