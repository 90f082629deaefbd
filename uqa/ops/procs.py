"""Process trees that never outlive their supervisor.

Training runs as supervisor (the flow, or `python -m tasks.train` under `dvc repro`) -> `accelerate
launch` -> one rank per device. The launcher runs in its own session so that the terminal's Ctrl-C
reaches only the supervisor, which then stops the tree in order; torch's elastic agent (several
ranks) starts every rank in a session of its own too, so a process-group kill alone would miss
them. Hence:

- `stop_tree` stops the launcher and every descendant: SIGTERM, a short grace, then SIGKILL.
- The launcher gets a parent-death signal (Linux `prctl(PR_SET_PDEATHSIG)`), and every rank
  watches the supervisor (`watch_supervisor`): when the supervisor is SIGKILLed, the tree goes too.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

import psutil

log = logging.getLogger(__name__)

SUPERVISOR_ENV = "UQA_SUPERVISOR"  # "<pid>:<start time>" of the process that must outlive the tree
_PR_SET_PDEATHSIG = 1


def start_time(pid: int) -> float | None:
    """When `pid` started (None if it does not exist): pid plus start time names a process uniquely."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def supervisor_token(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{pid}:{start_time(pid)}"


def is_alive(token: str) -> bool:
    """Whether the process a `supervisor_token` names still runs (a zombie does not count)."""
    pid_text, _, started = token.partition(":")
    try:
        proc = psutil.Process(int(pid_text))
        return str(proc.create_time()) == started and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, ValueError):
        return False


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send `sig` to this process when its parent exits (Linux; no-op elsewhere).

    Used as `preexec_fn` for the launcher and at the start of every rank."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


def watch_supervisor(token: str | None = None, interval_s: float = 1.0) -> threading.Thread | None:
    """In a rank: exit at once when the supervisor named in $UQA_SUPERVISOR is gone.

    The parent-death signal covers the direct parent; this covers the supervisor further up (the
    launcher may survive it, or the parent may have died before the signal was armed)."""
    die_with_parent()
    token = token or os.environ.get(SUPERVISOR_ENV)
    if not token:
        return None

    def stop() -> None:
        # no cleanup to do that is worth a hang: a half-written checkpoint is skipped on resume
        print(f"error: train: the supervising process ({token.split(':')[0]}) is gone; stopping this rank",
              file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    # checked here, synchronously, once the parent-death signal is armed: a supervisor that died
    # while this process was starting (its launcher gone too, so the signal will never come) is
    # caught now, not when a thread gets its turn between the main thread's imports
    if not is_alive(token):
        stop()

    def watch() -> None:
        while is_alive(token):
            time.sleep(interval_s)
        stop()

    thread = threading.Thread(target=watch, name="uqa-supervisor-watch", daemon=True)
    thread.start()
    return thread


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def stop_tree(pid: int, grace_s: float = 5.0) -> int:
    """SIGTERM `pid`'s process group and every descendant, SIGKILL what is left after `grace_s`.

    Returns how many processes had to be stopped. Descendants are collected before the first
    signal (once the launcher dies its children are re-parented and can no longer be found)."""
    procs = {p.pid: p for p in _tree(pid)}
    if not procs:
        return 0
    for p in list(procs.values()):
        procs.update({c.pid: c for c in _tree(p.pid)})
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGTERM)
    for p in procs.values():
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(list(procs.values()), timeout=grace_s)
    for p in alive:
        procs.update({c.pid: c for c in _tree(p.pid)})  # anything started during the grace period
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
    leftover = [p for p in procs.values() if p.is_running()]
    for p in leftover:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(leftover, timeout=grace_s)
    return len(procs)


def raise_if_interrupted() -> None:
    """KeyboardInterrupt here if a signal sigterm_as_interrupt turned into one was caught and dropped
    by the code since (a call after a step that may swallow it, e.g. the first import of torch)."""
    if _RECEIVED:
        raise _interrupt(_RECEIVED[0])


def _interrupt(signum: int) -> KeyboardInterrupt:
    """Ctrl-C as Python raises it (no message: the CLI says "Ctrl-C"); SIGTERM named."""
    return KeyboardInterrupt(f"signal {signal.Signals(signum).name}" if signum == signal.SIGTERM else "")


_RECEIVED: list[int] = []  # the signals sigterm_as_interrupt's handler has turned into KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block (main thread only), SIGTERM raises KeyboardInterrupt, so that `finally`
    blocks stop child processes and remove temporary outputs instead of the process just dying;
    and neither it nor Ctrl-C can be lost: one that the code inside caught and dropped raises
    KeyboardInterrupt when the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    _RECEIVED.clear()

    def handler(signum, frame):
        _RECEIVED.append(signum)
        raise _interrupt(signum)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        if previous[sig] is not signal.SIG_IGN:  # a background job's Ctrl-C stays ignored
            signal.signal(sig, handler)
    try:
        yield
        # an interrupt that the code inside swallowed (importing torch can, mid-import) still ends
        # the block as one: the work finished, but whoever pressed Ctrl-C meant to stop it
        raise_if_interrupted()
    finally:
        for sig, handler_before in previous.items():
            signal.signal(sig, handler_before)
