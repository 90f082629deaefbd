"""Our and the libraries' log records in the Prefect run's log (the UI's Logs tab), each record in
the innermost run only, URL credentials stripped."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from prefect import get_run_logger

from uqa.ops.redact import RedactUrlCredentials

BRIDGED_LOGGERS = ("tasks", "uqa", "flows", "transformers", "datasets", "accelerate")


class _RunLogBridge(logging.Handler):
    """Forward our and the libraries' log records to the Prefect run log (the UI's Logs tab).

    Records from threads without a run context (the reader of the training process's output) go
    to the flow run's logger."""

    def __init__(self, flow_logger, level: int = logging.INFO):
        super().__init__(level)
        self.flow_logger = flow_logger
        self.addFilter(RedactUrlCredentials())  # no user:token@ of a URL reaches the run log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            try:
                logger = get_run_logger()
            except Exception:  # no run context in this thread
                logger = self.flow_logger
            logger.log(record.levelno, "%s: %s", record.name, record.getMessage())
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def run_log_bridge() -> Iterator[None]:
    """Our and the libraries' log records go to this flow run's log meanwhile (see _RunLogBridge)."""
    handler, saved = _bridge_logs()
    try:
        yield
    finally:
        _unbridge_logs(handler, saved)


def _bridge_logs() -> tuple[logging.Handler, dict[str, tuple[int, bool, list[logging.Handler]]]]:
    """Attach the bridge; our loggers stop propagating meanwhile (the run logger prints them once).
    In a subflow (a sweep's trial) the parent's bridge is detached meanwhile: each record goes to
    the innermost run only, once."""
    handler = _RunLogBridge(get_run_logger(), level=logging.INFO)
    saved = {}
    for name in BRIDGED_LOGGERS:
        lg = logging.getLogger(name)
        outer = [h for h in lg.handlers if isinstance(h, _RunLogBridge)]
        for h in outer:
            lg.removeHandler(h)
        saved[name] = (lg.level, lg.propagate, outer)
        lg.addHandler(handler)
        if name in ("tasks", "uqa", "flows"):
            lg.setLevel(logging.INFO)
            lg.propagate = False
        elif lg.level == logging.NOTSET:
            lg.setLevel(logging.WARNING)
    return handler, saved


def _unbridge_logs(handler: logging.Handler, saved: dict[str, tuple[int, bool, list[logging.Handler]]]) -> None:
    for name, (level, propagate, outer) in saved.items():
        lg = logging.getLogger(name)
        lg.removeHandler(handler)
        for h in outer:
            lg.addHandler(h)
        lg.setLevel(level)
        lg.propagate = propagate
