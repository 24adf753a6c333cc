"""Errors raised at the library boundary.

Every error names the bad input and says what to do; the CLI prints the message without a
traceback and exits with status 2.
"""
from __future__ import annotations


class SynthexError(Exception):
    """A user-facing error: bad path, column, image, prompt, seed or configuration."""


class DataSourceError(SynthexError):
    """A data source is missing, has the wrong layout or lacks a required column."""


class OutputExistsError(SynthexError):
    """An output folder already holds results and --overwrite/--resume was not given."""
