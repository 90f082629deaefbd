"""Errors a user can act on: printed as one clear message, never as a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or configuration. The message names the file, row and field, and says what to do."""


class DataError(UserError):
    """A data file does not have the schema or content the pipeline needs."""


class TransientError(UserError):
    """A failure that may go away by itself (network, hub outage): worth a retry."""
