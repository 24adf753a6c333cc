"""Errors raised at the library boundary.

Every error names the bad input and says what to do; the CLI prints the message without a
traceback and exits with status 2.
"""
from __future__ import annotations

import os
from pathlib import Path


class SynthexError(Exception):
    """A user-facing error: bad path, column, image, prompt, seed or configuration."""


class ConfigError(SynthexError, ValueError):
    """A training or model configuration is invalid (unknown key, wrong value, mismatched
    architecture). Also a ``ValueError`` for callers that caught the old plain ``ValueError``."""


class DataSourceError(SynthexError):
    """A data source is missing, has the wrong layout or lacks a required column."""


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
