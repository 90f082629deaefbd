"""Environment defaults for every command we ship: quiet, no telemetry, patient on a slow first start.

Applied with `setdefault` before Prefect, DVC or Hugging Face libraries are imported, so a user's
own setting always wins (e.g. `PREFECT_SERVER_ANALYTICS_ENABLED=true uqa run` turns it back on).
"""

from __future__ import annotations

import os

DEFAULTS = {
    # a brand-new PREFECT_HOME creates and migrates its database on first use: 23 s to healthy was
    # measured on a 2-core machine, over Prefect's 20 s default, so a user's first `uqa demo` failed
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # the temporary server's telemetry heartbeat prints a ~100-line sqlite "database is locked"
    # traceback into the terminal; both settings are needed to stop Prefect phoning home
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    # flow-run heartbeats every 60 s (Prefect's default is 180): `uqa alerts` sets a run Crashed after
    # 270 s without one, so a dead run is reported within 5 minutes and a live one misses 4 in a row first
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "60",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


def apply_runtime_defaults() -> None:
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
