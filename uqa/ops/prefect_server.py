"""The Prefect API a `uqa` command reports to: the user's, or a temporary local server we own.

Without an API URL, Prefect would start its own temporary server as a child in *our* process group:
the terminal's Ctrl-C then kills that server at the same moment as the flow, which is left retrying
to report its Crashed state to nobody (the command hung for 30 s and more). The server started here
runs in its own session (Ctrl-C reaches only `uqa`, which records the interruption and then stops
the server), with a parent-death signal (a SIGKILLed `uqa` does not leave it behind), and waits as
long as a brand-new PREFECT_HOME needs to create its database.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

from uqa.errors import UserError
from uqa.ops.procs import die_with_parent, stop_tree
from uqa.ops.runtime import TELEMETRY_OFF

log = logging.getLogger(__name__)

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def configured_api_url() -> str | None:
    from prefect.settings import get_current_settings

    return get_current_settings().api.url


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def start_prefect_server(port: int, out: IO[str], env: dict[str, str], minimal: bool = True) -> subprocess.Popen:
    """`prefect server start` on 127.0.0.1:`port`, output to `out`, in its own session (the terminal's
    Ctrl-C does not reach it: its owner stops it) and with a parent-death signal (a SIGKILLed owner
    does not leave it behind). `minimal`: no background services and no UI (one run needs neither)."""
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    if minimal:
        cmd += ["--no-services", "--no-ui"]
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=die_with_parent, env=env)


def wait_until_healthy(url: str, proc: subprocess.Popen, timeout_s: float, log_path: Path, hint: str = "") -> None:
    """Until `url`/health answers; a UserError with the server's log when it exits or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while not _healthy(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = Path(log_path).read_text(errors="replace")[-1500:]
            why = f"exited with status {proc.returncode}" if proc.poll() is not None else f"not healthy after {timeout_s:g} s"
            raise UserError(f"the Prefect server on {url.removesuffix('/api')} {why}"
                            + (f" ({hint})" if hint else "") + f". Its log:\n{tail}")
        time.sleep(0.3)


def _nothing() -> Any:
    return None


def temporary_server_env() -> dict[str, str]:
    """The environment of a temporary server (a setting the user gave, under any of its names, wins)."""
    env = dict(os.environ)

    def default(value: str, *names: str) -> None:
        if not any(name in env for name in names):
            env[names[0]] = value

    for name, value in TELEMETRY_OFF.items():
        default(value, name)
    # one run needs no block catalog, and registering it is 5 s of a brand-new PREFECT_HOME's first
    # start. Memoizing goes off with it: otherwise the skipped registration is remembered as done
    # and the user's own `prefect server start` on this PREFECT_HOME would skip it too.
    default("false", "PREFECT_SERVER_REGISTER_BLOCKS_ON_START", "PREFECT_API_BLOCKS_REGISTER_ON_START")
    default("false", "PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION", "PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION")
    return env


@contextlib.contextmanager
def prefect_api(meanwhile: Callable[[], T] = _nothing) -> Iterator[T]:
    """Make the Prefect API available to the block: the user's, or a temporary server that is started
    (and always stopped) when none is set. `meanwhile` (imports, preparing a workspace) runs while
    that server starts, which takes 10 s and more; the block gets its result."""
    url = configured_api_url()
    if url:
        yield meanwhile()
        return
    from prefect.context import refresh_global_settings_context
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    timeout = float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
    server_log = Path(tempfile.mkstemp(prefix="uqa-prefect-server-", suffix=".log")[1])
    print(f"Starting a temporary Prefect server on {url.removesuffix('/api')} (set PREFECT_API_URL to use your own)",
          file=sys.stderr, flush=True)
    with open(server_log, "w") as out:
        proc = start_prefect_server(port, out, temporary_server_env())
    try:
        prepared = meanwhile()
        wait_until_healthy(url, proc, timeout, server_log,
                           hint="raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or start one with "
                                "`prefect server start` and set PREFECT_API_URL")
        previous = os.environ.get("PREFECT_API_URL")
        # the environment (processes we start) and Prefect's global settings (threads that carry no
        # settings context of their own, e.g. its event loop thread: without this they would start a
        # temporary server of their own and send artifacts there)
        os.environ["PREFECT_API_URL"] = url
        refresh_global_settings_context()
        try:
            with temporary_settings(updates={PREFECT_API_URL: url}):
                try:
                    yield prepared
                finally:
                    _drain_logs()
        finally:
            if previous is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = previous
            refresh_global_settings_context()
    finally:
        stop_tree(proc.pid, grace_s=5)
        server_log.unlink(missing_ok=True)


def _drain_logs() -> None:
    """Deliver the run's last log lines and events while the server is still there."""
    with contextlib.suppress(Exception):
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
    with contextlib.suppress(Exception):
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all(timeout=10)
