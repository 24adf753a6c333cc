"""Errors raised at the library boundary.

Every error names the bad input and says what to do; the CLI prints the message without a
traceback and exits with status 2.
"""
from __future__ import annotations

import errno
import os
import sys
from pathlib import Path


class SynthexError(Exception):
    """A user-facing error: bad path, column, image, prompt, seed or configuration."""


class ConfigError(SynthexError, ValueError):
    """A training or model configuration is invalid (unknown key, wrong value, mismatched
    architecture). Also a ``ValueError`` for callers that caught the old plain ``ValueError``."""


class DataSourceError(SynthexError):
    """A data source is missing, has the wrong layout or lacks a required column."""


class OutOfMemoryError(SynthexError):
    """Generation or training ran out of memory even after the fallbacks (tiling, offload)."""


class OutputExistsError(SynthexError):
    """An output folder already holds results and --overwrite/--resume was not given."""


class ImageReadError(SynthexError):
    """An image file cannot be read: missing, not an image, truncated or corrupt."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(
            f"cannot read image {self.path}: {reason}; re-download or re-export the file, "
            "or leave it out of the image list"
        )

    def __reduce__(self):  # picklable across worker processes
        return type(self), (self.path, self.reason)


class OutsidePathError(DataSourceError):
    """A row of a data file names a file outside its folder (absolute, ``..``) or no file."""

    def __init__(self, folder: str | os.PathLike[str], name: str, reason: str) -> None:
        self.folder = Path(folder)
        self.name = name
        self.reason = reason
        super().__init__(f"{name!r} in {self.folder}: {reason}; a data file may only name files inside its "
                         "folder, as paths relative to it (e.g. images/0001.png)")

    def __reduce__(self):
        return type(self), (self.folder, self.name, self.reason)


# --------------------------------------------------------------------------------------------
# One reading of a failure for every front end (the CLI boundary and the web app)
# --------------------------------------------------------------------------------------------
_WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG}


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


def is_out_of_memory(err: BaseException) -> bool:
    """Host or accelerator memory ran out (``MemoryError``, ``torch.OutOfMemoryError``)."""
    if isinstance(err, (MemoryError, OutOfMemoryError)):
        return True
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    return oom is not None and isinstance(err, oom)


OUT_OF_MEMORY = ("out of memory; lower --batch-size, --resolution / --width / --height or --n, "
                 "or close other programs")


def explain(err: BaseException) -> str | None:
    """The one-line message for a failure the user can act on, or None for a bug."""
    if isinstance(err, SynthexError):
        return str(err) or type(err).__name__
    if is_out_of_memory(err):
        return f"{OUT_OF_MEMORY} ({str(err).strip().splitlines()[0]})" if str(err).strip() else OUT_OF_MEMORY
    if isinstance(err, UnicodeDecodeError):
        return f"a text file is not UTF-8 ({err.reason} at byte {err.start}); save it as UTF-8 and run again"
    if isinstance(err, OSError):
        return describe_os_error(err)
    return None
