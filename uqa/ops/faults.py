"""Named fault-injection points: how the tests kill -9 a run at an exact place, deterministically.

`UQA_FAILPOINT=<name>` (or `<name>@<value>`, matched against the point's `at` value, e.g. a
training step) makes the process SIGKILL itself when it reaches that point, together with the
supervisor named in $UQA_SUPERVISOR (training ranks) so that the whole run dies as in a power cut.
`<name>[@<value>]=enospc` raises OSError(ENOSPC) there instead: a full disk at that write, on any
filesystem (the tests' other variant mounts a small tmpfs, which needs root).
Unset (every normal run), a failpoint is one dictionary lookup. The pattern is that of
FreeBSD's fail(9) or TiKV's fail-rs: the crash happens in the real code path, not in a mock.
"""

from __future__ import annotations

import os
import signal

FAILPOINT_ENV = "UQA_FAILPOINT"


def failpoint(name: str, at: object = None) -> None:
    spec = os.environ.get(FAILPOINT_ENV)
    if not spec:
        return
    point, _, action = spec.partition("=")
    wanted, _, value = point.partition("@")
    if wanted != name or (value and str(at) != value):
        return
    if action == "enospc":
        import errno

        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    import psutil

    from uqa.ops.procs import SUPERVISOR_ENV

    # a training rank takes its launcher and the supervisor with it: every process up to the supervisor
    supervisor = os.environ.get(SUPERVISOR_ENV, "").split(":")[0]
    chain = [p.pid for p in psutil.Process().parents()]
    if supervisor.isdigit() and int(supervisor) in chain:
        for pid in chain[: chain.index(int(supervisor)) + 1]:
            os.kill(pid, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
