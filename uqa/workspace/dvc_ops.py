"""DVC as the record of which stages are up to date, and the lock that gives a run its workspace.

The Prefect flow asks DVC whether a stage is up to date (`dvc status <stage>`: its deps, params and
outs match dvc.lock); if not, it calls the stage function and records the result with
`dvc commit <stage>`, exactly as `dvc repro` would have. One definition, one record, either way."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from uqa.errors import UserError, first_line
from uqa.ops.atomic import atomic_write_json
from uqa.ops.jsonfile import read_json
from uqa.workspace.statefiles import guarded_commit, recover_lockfile

log = logging.getLogger(__name__)


@contextlib.contextmanager
def working_dir(path: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


HOLDER_FILE = Path(".dvc/tmp/uqa-run.json")  # who holds the workspace lock (DVC's own lock file holds a pid)
_HELD: dict[Path, Any] = {}  # project root -> the DVC Repo whose lock this process holds for a whole run


class WorkspaceBusy(UserError):
    """Another run (a flow, `dvc repro`, `dvc exp run`) holds this workspace."""


def describe_holder(root: Path) -> str:
    """pid, host, start time and command of the process holding DVC's repo lock in `root`."""
    import socket

    import psutil

    lock_file = Path(root) / ".dvc/tmp/lock"
    try:
        pid = int(lock_file.read_text().strip())
    except (OSError, ValueError):
        return f"unknown holder (see {lock_file})"
    info = _read_holder(Path(root)) or {}
    if info.get("pid") == pid:
        return (f"{info.get('command')} (pid {pid} on {info.get('host')}, started {info.get('started')}"
                + (f", flow run {info['flow_run']}" if info.get("flow_run") else "") + ")")
    try:
        proc = psutil.Process(pid)
        started = datetime.fromtimestamp(proc.create_time(), timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        command = " ".join(" ".join(proc.cmdline()).split())  # one line, however the command was quoted
        command = command if len(command) <= 100 else command[:97] + "..."
        return f"{command} (pid {pid} on {socket.gethostname()}, started {started})"
    except psutil.Error:
        return f"pid {pid} (no longer running)"


@contextlib.contextmanager
def locked_workspace(root: Path, wait_s: float = 0.0, command: str = "uqa run",
                     flow_run: str | None = None) -> Iterator[None]:
    """Hold DVC's repo lock on `root` for a whole run: a second flow, `dvc repro` or `dvc exp run`
    in the same workspace cannot start meanwhile (they fail at once, or this waits up to `wait_s`).

    The lock is an flock: the kernel releases it when its holder dies, however it dies, so a
    killed run never leaves a lock behind. Every DVC call of the run (dvc_status, dvc_commit, ...)
    goes through the Repo opened here."""
    from dvc.repo import Repo

    root = Path(root).resolve()
    with contextlib.ExitStack() as stack:  # left in reverse: forget the repo, holder file, lock, repo, cwd
        stack.enter_context(working_dir(root))
        repo = stack.enter_context(Repo(str(root)))
        _take_repo_lock(stack, repo, root, wait_s)
        _record_holder(root, command, flow_run)
        stack.callback((root / HOLDER_FILE).unlink, missing_ok=True)
        _HELD[root] = repo
        stack.callback(_HELD.pop, root, None)
        recover_lockfile(root)  # under the lock: a killed commit's dvc.lock restored, or one clear error
        yield


def _take_repo_lock(stack: contextlib.ExitStack, repo: Any, root: Path, wait_s: float) -> None:
    """DVC's repo lock, held until `stack` closes; waits up to `wait_s` for another holder, saying who."""
    from dvc.lock import LockError
    from dvc.repo import lock_repo

    deadline = time.monotonic() + wait_s
    told = False
    while True:
        try:
            stack.enter_context(lock_repo(repo))
            return
        except LockError:
            holder = describe_holder(root)
            if time.monotonic() >= deadline:
                raise WorkspaceBusy(
                    f"{root} is in use by another run: {holder}. This run was not started; "
                    "wait for that one to finish (or pass a wait time, e.g. uqa run --wait 60)."
                ) from None
            if not told:
                log.warning("waiting up to %.0f s for the workspace lock, held by %s", wait_s, holder)
                told = True
            time.sleep(2)


def _record_holder(root: Path, command: str, flow_run: str | None) -> None:
    """Who holds the lock now (DVC's own lock file has only a pid); a run that died holding it is reported."""
    import socket

    stale = _read_holder(root)
    if stale and stale.get("pid") != os.getpid():
        log.warning("a previous run (%s, pid %s, started %s) ended without finishing; its lock was "
                    "released when it died", stale.get("command"), stale.get("pid"), stale.get("started"))
    atomic_write_json(root / HOLDER_FILE, {
        "pid": os.getpid(), "host": socket.gethostname(), "command": command, "flow_run": flow_run,
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
    })


def _read_holder(root: Path) -> dict[str, Any] | None:
    try:
        return read_json(root / HOLDER_FILE, missing=None)
    except UserError:  # cut off by a kill: no holder to report
        return None


@contextlib.contextmanager
def dvc_repo(root: Path) -> Iterator[Any]:
    """The Repo of the run that holds `root`'s lock in this process, else a fresh one (which takes
    DVC's lock for each call, as the dvc CLI does)."""
    from dvc.repo import Repo

    root = Path(root).resolve()
    with working_dir(root):  # DVC resolves stage names against the cwd
        held = _HELD.get(root)
        if held is not None:  # locked_workspace checked dvc.lock when it took the lock; no one commits but us
            held._reset()  # what DVC does on each lock acquisition: re-read dvc.yaml/dvc.lock
            yield held
            return
        recover_lockfile(root)  # a commit killed last time: its dvc.lock copy back, or one clear error
        with Repo(str(root)) as repo:
            yield repo


def missing_stage_params(root: Path) -> list[str]:
    """The params dvc.yaml's stages read that their params file does not set ("data.revision"; with
    the file's name when it is not params.yaml). DVC finds them only when it records a stage, after
    the stage has done its work; a run asks first."""
    from dvc.dependency.param import ParamsDependency

    missing: list[str] = []
    with dvc_repo(root) as repo:
        for stage in repo.index.stages:
            for dep in stage.deps:
                if not isinstance(dep, ParamsDependency):
                    continue
                found = dep.read_params()
                where = "" if Path(dep.def_path).name == "params.yaml" else f"{dep.def_path}:"
                missing += [f"{where}{key}" for key in dep.params if key not in found
                            and f"{where}{key}" not in missing]
    return missing


def require_stage_params(root: Path, params: Any) -> None:
    """One UserError naming every param dvc.yaml's stages read and params.yaml does not set, with the
    value this run would have used for each: checked before any stage does work."""
    missing = missing_stage_params(root)
    if not missing:
        return
    values = dataclasses.asdict(params)
    shown = []
    for key in missing:
        value: Any = values
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        shown.append(f"{key}: (a section)" if isinstance(value, dict) else f"{key}: {json.dumps(value)}")
    raise UserError(f"{Path(root) / 'params.yaml'} does not set {', '.join(missing)}, which dvc.yaml's stages "
                    f"read (DVC records them with each stage's results): add them (the project's params.yaml "
                    f"has every one; the defaults: {'; '.join(shown)})")


def dvc_status(root: Path, stage: str) -> dict[str, Any]:
    """{} when the stage is up to date with dvc.lock, else DVC's description of what changed."""
    with dvc_repo(root) as repo:
        return repo.status(targets=[stage])


def dvc_commit(root: Path, stage: str) -> None:
    """Record the stage's deps, params and outs in dvc.lock (and its outs in the DVC cache)."""
    with dvc_repo(root) as repo, guarded_commit(Path(root).resolve()):  # DVC rewrites dvc.lock in place
        repo.commit(stage, force=True)


def dvc_checkout(root: Path, stage: str, pull: bool = False) -> bool:
    """Restore a stage's outputs from the DVC cache when dvc.lock is current but files are missing
    (with `pull`, objects the cache lacks come from the default DVC remote first)."""
    try:
        with dvc_repo(root) as repo:
            if pull:
                repo.fetch(targets=[stage])
            repo.checkout(targets=[stage])
        return not dvc_status(root, stage)
    except Exception:
        return False


def dvc_restore(root: Path, stage: str, pull: bool = False) -> bool:
    """Restore a stage from DVC's run-cache, as `dvc repro` does before running a stage: when a run with
    the same command, deps and params was recorded (here, or on another machine and fetched with
    `dvc fetch --run-cache`), its outputs are checked out instead of running it, and dvc.lock records it.
    With `pull`, the outputs come from the default DVC remote when the cache lacks them. False when there
    is no such run (or the stage cannot be restored: `always_changed`, persistent outputs)."""
    from dvc.repo import lock_repo
    from dvc.stage.cache import RunCacheNotFoundError

    try:
        with dvc_repo(root) as repo:
            found = repo.stage.collect(stage)
            if len(found) != 1:
                return False
            # checking outputs out needs DVC's repo lock: held for the run by locked_workspace, else taken here
            with contextlib.nullcontext() if repo.lock.is_locked else lock_repo(repo):
                repo.stage_cache.restore(found[0], pull=pull)
    except RunCacheNotFoundError:
        return False
    except Exception as exc:  # noqa: BLE001 - a run-cache that cannot be used: the stage simply runs
        log.warning("%s: the run-cache could not be used (%s: %s); running the stage", stage, type(exc).__name__,
                    first_line(exc))
        return False
    dvc_commit(root, stage)
    return not dvc_status(root, stage)


def default_remote(repo: Any) -> str | None:
    """The name of the project's default DVC remote (`dvc remote add -d`), None when there is none."""
    return repo.config.get("core", {}).get("remote") or None


def dvc_push(root: Path, targets: list[str] | None = None, run_cache: bool = False) -> int | None:
    """`dvc push [--run-cache] [targets]` to the default remote; None when no default remote is configured."""
    with dvc_repo(root) as repo:
        if not default_remote(repo):
            return None
        return repo.push(targets=targets, run_cache=run_cache)


def push_run_cache(root: Path) -> int:
    """`dvc push --run-cache`, and the files its entries need that it does not send: DVC 3 pushes the run
    entries and the workspace's cached outputs, but not the `cache: false` outputs (reports, dvclive,
    metrics) that a run-cache entry restores, which `dvc commit` put in the cache. Without them another
    machine's restore (dvc_restore with pull) finds the entry but not its files, and runs the stage again.
    Pushed here for this workspace's stages: exactly what that restore pulls. Returns the files sent."""
    from dvc.stage.serialize import to_single_stage_lockfile

    pushed = dvc_push(root, run_cache=True) or 0
    with dvc_repo(root) as repo:
        for stage in repo.index.stages:
            recorded_run = (stage.cmd and stage.deps and stage.outs and not stage.always_changed
                            and all(dep.hash_info for dep in stage.deps) and all(out.hash_info for out in stage.outs)
                            and not any(out.persist for out in stage.outs))  # what the run-cache keeps (dvc.lock's)
            if not recorded_run or all(out.use_cache for out in stage.outs):
                continue  # not in the run-cache, or every output is one `dvc push` just sent
            recorded = repo.stage_cache._create_stage(to_single_stage_lockfile(stage), wdir=stage.wdir)
            for objs in recorded.get_used_objs().values():
                pushed += len(repo.cloud.push(objs).transferred)
    return pushed
