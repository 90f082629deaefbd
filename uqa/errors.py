"""Errors a user can act on: printed as one clear message, never as a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or configuration. The message names the file, row and field, and says what to do."""


class DataError(UserError):
    """A data file does not have the schema or content the pipeline needs."""


class TransientError(UserError):
    """A failure that may go away by itself (network, hub outage): worth a retry."""


ERROR_LINE_CHARS = 300  # how much of a library's error message goes into ours


def first_line(error: BaseException | str, limit: int = ERROR_LINE_CHARS) -> str:
    """The first line of an error message, cut to `limit` characters: a library's multi-line
    message (a traceback, an HTTP body) becomes one line inside ours."""
    return (str(error).strip().splitlines() or [""])[0][:limit]
