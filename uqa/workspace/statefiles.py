"""dvc.lock survives a kill at any instant: a verified copy is kept before each `dvc commit`.

DVC rewrites dvc.lock in place (`open(path, "w+")`, then the YAML dump): a run killed inside a commit
leaves it empty or cut short, and every later DVC call fails on it. So before each commit the run
keeps a copy of dvc.lock that DVC's own schema accepts (or notes that there was none) and a marker
saying a commit is under way; the marker is removed once the commit returns. The next start that
finds the marker knows the last commit was cut short and puts the copy back (a stage whose commit
was lost simply runs, or is committed, again), saying so in one line. A dvc.lock DVC cannot read
with no commit of ours under way is one clear error naming the file and the repair, never a
traceback. Everything lives under .dvc/tmp/ (DVC's own scratch space, ignored by git).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from uqa.errors import UserError
from uqa.ops.atomic import atomic_write_bytes, fsync_dir
from uqa.ops.faults import FAILPOINT_ENV, failpoint

log = logging.getLogger(__name__)

LOCK_FILE = "dvc.lock"
KEEP_DIR = Path(".dvc/tmp/uqa-state")
COPY = KEEP_DIR / "dvc.lock.verified"  # dvc.lock as it was before the commit under way
ABSENT = KEEP_DIR / "dvc.lock.absent"  # there was no dvc.lock before the commit under way
COMMITTING = KEEP_DIR / "dvc.lock.committing"  # a commit is under way (removed when it returns)


class LockfileUnreadable(UserError):
    """dvc.lock cannot be read by DVC and there is nothing to restore it from."""


def lockfile_problem(data: bytes, name: str = LOCK_FILE) -> str | None:
    """Why DVC would refuse this dvc.lock content (None: it reads it)."""
    from dvc.schema import COMPILED_LOCKFILE_SCHEMA
    from ruamel.yaml import YAML

    if not data.strip():
        return "it is empty"
    try:
        parsed = YAML(typ="safe").load(data.decode("utf-8"))
    except Exception as exc:  # a YAML or encoding error: the file was cut short
        return f"not valid YAML: {' '.join(str(exc).split())[:200]}"
    if not isinstance(parsed, dict):
        return "not a mapping"
    try:
        COMPILED_LOCKFILE_SCHEMA(parsed)
    except Exception as exc:  # voluptuous' Invalid: what DVC reports as YAMLValidationError
        return f"not a dvc.lock DVC accepts: {' '.join(str(exc).split())[:200]}"
    return None


def recover_lockfile(root: Path) -> None:
    """At a run's start: finish what a killed commit left (restore the copy), or stop on an unreadable dvc.lock."""
    root = Path(root)
    lock, copy, absent, committing = root / LOCK_FILE, root / COPY, root / ABSENT, root / COMMITTING
    if committing.exists():
        if _committer_alive(committing):
            return  # another live process is committing in this workspace right now: not ours to touch
        if copy.exists():
            atomic_write_bytes(lock, copy.read_bytes())
            log.warning("restored %s from the copy kept before the last dvc commit (a run was killed while DVC "
                        "rewrote it); the stage it was committing is checked again", lock)
        elif absent.exists():
            if lock.exists():
                lock.unlink()
                fsync_dir(root)
            log.warning("removed the %s a run killed inside its first dvc commit left (there was none before); "
                        "the stage it was committing is checked again", lock)
        committing.unlink(missing_ok=True)
        return
    if not lock.exists():
        return
    problem = lockfile_problem(lock.read_bytes())
    if problem is None:
        return
    keep = f", or put back the copy uqa kept before its last commit (`cp {copy} {lock}`)" if copy.exists() else ""
    raise LockfileUnreadable(
        f"{lock} cannot be read by DVC ({problem}): restore it from git (`git checkout -- {LOCK_FILE}`){keep}, or "
        f"remove it (`rm {lock}`: every stage is then run again)")


def _committer_alive(marker: Path) -> bool:
    import psutil

    try:
        pid = int(marker.read_text().strip())
    except (OSError, ValueError):
        return False
    return pid != os.getpid() and psutil.pid_exists(pid)


@contextlib.contextmanager
def guarded_commit(root: Path) -> Iterator[None]:
    """Around a DVC call that rewrites dvc.lock: a verified copy (or "there was none") and a marker first;
    the marker goes when the call returns or raises (then DVC wrote the file, or never started)."""
    root = Path(root)
    lock = root / LOCK_FILE
    (root / KEEP_DIR).mkdir(parents=True, exist_ok=True)
    if lock.exists():
        data = lock.read_bytes()
        problem = lockfile_problem(data)
        if problem is not None:  # never keep a broken file as the "verified" one
            raise LockfileUnreadable(f"{lock} cannot be read by DVC ({problem}): restore it from git "
                                     f"(`git checkout -- {LOCK_FILE}`), or remove it (`rm {lock}`: every stage is "
                                     "then run again)")
        atomic_write_bytes(root / COPY, data)
        (root / ABSENT).unlink(missing_ok=True)
    else:
        atomic_write_bytes(root / ABSENT, b"")
        (root / COPY).unlink(missing_ok=True)
    atomic_write_bytes(root / COMMITTING, f"{os.getpid()}\n".encode())
    try:
        with _failpoint_inside_dvc_writes():
            yield
    finally:
        (root / COMMITTING).unlink(missing_ok=True)


@contextlib.contextmanager
def _failpoint_inside_dvc_writes() -> Iterator[None]:
    """With UQA_FAILPOINT=dvc.lock.write set (tests only): the `dvc.lock.write` failpoint fires inside DVC's
    own YAML write, after DVC opened dvc.lock with "w+" (truncated it) and before it wrote a byte: the
    window a kill -9 hits. Without it, DVC's code is untouched."""
    if not os.environ.get(FAILPOINT_ENV, "").startswith("dvc.lock.write"):
        yield
        return
    import dvc.utils.serialize._yaml as dvc_yaml

    original = dvc_yaml._dump

    def dump(data, stream):
        failpoint("dvc.lock.write", at=Path(getattr(stream, "name", "")).name)
        return original(data, stream)

    dvc_yaml._dump = dump
    try:
        yield
    finally:
        dvc_yaml._dump = original
