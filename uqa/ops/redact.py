"""Credentials never leave in a URL: what is logged, shown in an artifact or handed to another run
(a job variable) has `https://user:token@host/...` written as `https://host/...`.

The process that needs the credentials keeps using the configured remote *by name* (git push origin,
dvc push), so git's and DVC's own credential handling still applies; a machine that clones from a
stripped URL authenticates with its own credentials (a git credential helper, an SSH key)."""

from __future__ import annotations

import logging
import re

# scheme://userinfo@ : userinfo is everything up to the last @ before the host (no /, no whitespace)
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s@'\"<>]+)@")


def _replace(match: re.Match[str]) -> str:
    scheme, userinfo = match["scheme"], match["userinfo"]
    if scheme.lower().startswith(("ssh://", "git+ssh://", "ssh+git://")) and ":" not in userinfo:
        return match[0]  # ssh://git@host: a user name, not a secret
    return scheme


def strip_url_credentials(text: str) -> str:
    """`text` with the user:password (or token) part of every URL in it removed."""
    return _USERINFO.sub(_replace, text) if "://" in text else text


class RedactUrlCredentials(logging.Filter):
    """A logging filter: the record's message with URL credentials removed (the record is kept)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record that cannot format is left to the handler to report
            return True
        clean = strip_url_credentials(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


_FILTER = RedactUrlCredentials()
# Prefect's run loggers: what the UI's Logs tab and the terminal show of a run (a logger's filter sees the
# records logged to it, not its children's: our own loggers reach these through flows/pipeline.py's bridge)
REDACTED_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


def install_log_redaction() -> None:
    """Attach the filter to the loggers whose records reach the terminal and the Prefect API (idempotent)."""
    for name in REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
