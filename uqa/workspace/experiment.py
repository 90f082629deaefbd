"""A run with parameter overrides is a DVC experiment in its own workspace, never an edit of params.yaml.

In the spirit of `dvc exp run --temp`: the run gets a git worktree of the project under
`.dvc/tmp/uqa-exps/<name>` (detached at HEAD, plus the project's uncommitted pipeline files), sharing
the project's DVC cache, so every stage whose inputs did not change is restored from the cache instead
of run again. The overrides go into the worktree's params.yaml; the stages run there; the result is
saved with `dvc exp save --name <name>` (refs/exps in the project's git, so `dvc exp show` in the
project lists it with its params and metrics); the worktree is then removed. The project's
params.yaml, dvc.lock and outputs are never touched, so the next plain run uses params.yaml as
committed. Several experiments (sweep trials) can run at once, each in its own worktree.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from uqa import layout
from uqa.errors import UserError
from uqa.ops.git import GIT_REMOTE, git, status_entries
from uqa.ops.redact import strip_url_credentials

log = logging.getLogger(__name__)

EXPS_DIR = Path(".dvc/tmp/uqa-exps")
SNAPSHOT_TRAILER = "Uqa-Workspace-Snapshot: true"


def experiment_name(text: str) -> str:
    """A name git accepts as a ref component (and DVC as an experiment name)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return name or "uqa-exp"


def _dvc(cwd: Path, *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise UserError(strip_url_credentials(
            f"dvc {' '.join(args[:3])} failed in {cwd}: {(r.stderr or r.stdout).strip()[-1500:]}"))
    return r.stdout


def _workspace_changes(root: Path) -> list[tuple[str, str]]:
    """(git status, path) of tracked files changed and untracked files not ignored: what the worktree
    must get from the project to start from its current state (DVC outputs are ignored: they come
    from the cache)."""
    out = git(root, "status", "--porcelain", "--untracked-files=all", "-z", strip=False)
    return [(status, path) for status, path in status_entries(out) if "D" not in status]


def _absolute_if_outside(value: str, root: Path, worktree: Path) -> str:
    """A relative local path that resolves in the project but not in the worktree (data outside the
    repository, e.g. ../shared/...) is made absolute; paths inside the repository stay as they are."""
    if Path(value).is_absolute() or not value:
        return value
    in_project, in_worktree = glob.glob(str(root / value)), glob.glob(str(worktree / value))
    if in_project and not in_worktree:
        return os.path.normpath(root / value)
    return value


def localize_paths(params: dict[str, Any], root: Path, worktree: Path) -> dict[str, Any]:
    """Overrides that keep data.source, model.name and model.tokenizer pointing at the same files."""
    fixes: dict[str, Any] = {}
    source = (params.get("data") or {}).get("source")
    if isinstance(source, str):
        fixed = _absolute_if_outside(source, root, worktree)
        if fixed != source:
            fixes.setdefault("data", {})["source"] = fixed
    elif isinstance(source, dict):
        fixed_map = {}
        for split, spec in source.items():
            specs = [spec] if isinstance(spec, str) else list(spec or [])
            fixed_specs = [_absolute_if_outside(str(s), root, worktree) for s in specs]
            fixed_map[split] = fixed_specs[0] if isinstance(spec, str) else fixed_specs
        if fixed_map != source:
            fixes.setdefault("data", {})["source"] = fixed_map
    for key in ("name", "tokenizer"):
        value = (params.get("model") or {}).get(key)
        if isinstance(value, str) and (root / value).exists():
            fixed = _absolute_if_outside(value, root, worktree)
            if fixed != value:
                fixes.setdefault("model", {})[key] = fixed
    return fixes


@contextlib.contextmanager
def experiment_workspace(root: Path, name: str) -> Iterator[Path]:
    """A git worktree of `root` in its current state, sharing its DVC cache; removed afterwards."""
    from uqa.params.files import apply_overrides, read_raw
    from uqa.params.schema import PARAMS_FILE
    from uqa.params.validation import plain

    root = Path(root).resolve()
    if not (root / ".git").exists():
        raise UserError(f"{root}: a run with overrides is recorded as a DVC experiment, which needs a git "
                        "repository with at least one commit (git init && git add -A && git commit)")
    git(root, "rev-parse", "--verify", "HEAD")
    worktree = root / EXPS_DIR / name
    if worktree.exists():
        git(root, "worktree", "remove", "--force", str(worktree))
    git(root, "worktree", "prune")
    # a sweep's trial on another machine is a clone at the sweep's snapshot of the project's
    # workspace (`snapshot_commit`): the experiment starts from the commit the snapshot was taken on,
    # with the snapshot's changes, so its baseline is the project's HEAD and `dvc exp show` there lists it
    snapshot = is_snapshot(root, "HEAD")
    base = "HEAD^" if snapshot else "HEAD"
    git(root, "worktree", "add", "--detach", "--quiet", str(worktree), base)
    try:
        changed = [("M", p) for p in git(root, "diff", "--name-only", "-z", "HEAD^", "HEAD", strip=False).split("\0") if p] \
            if snapshot else []
        # tracked changes and untracked DVC records only: an untracked .env is not copied, so never
        # saved into the experiment's commit, which `dvc exp push` sends to the git remote
        tracked = dvc_tracked(root)
        carried = [(st, path) for st, path in _workspace_changes(root) if st != "??" or tracked(path)]
        for _, path in changed + carried:
            src, dst = root / path, worktree / path
            if src.is_file():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
            elif dst.is_file():  # deleted in the snapshot
                dst.unlink()
        cache_dir = _dvc(root, "cache", "dir").strip() or str(root / ".dvc" / "cache")
        _dvc(worktree, "cache", "dir", "--local", cache_dir)
        with contextlib.suppress(UserError):  # outputs missing from the cache are simply produced again
            _dvc(worktree, "checkout", "--quiet")
        fixes = localize_paths(plain(read_raw(worktree / PARAMS_FILE)), root, worktree)
        if fixes:
            apply_overrides(worktree / PARAMS_FILE, fixes)
        yield worktree
    finally:
        with contextlib.suppress(UserError):
            git(root, "worktree", "remove", "--force", str(worktree))
        shutil.rmtree(worktree, ignore_errors=True)
        with contextlib.suppress(UserError):
            git(root, "worktree", "prune")


def save_experiment(worktree: Path, name: str, stages: list[str]) -> None:
    """`dvc exp save --name NAME STAGES...` of the worktree, with its run's untracked records (dvc.lock,
    metrics). Only the stages that ran are cached: an experiment never registers, and in a project
    that has never registered, the register stage's output does not exist."""
    untracked = [path for status, path in _workspace_changes(worktree) if status == "??"]
    args = ["exp", "save", "--name", name, "--force", *stages]
    for path in untracked:
        args += ["-I", path]
    with experiment_refs_lock(worktree):
        _dvc(worktree, *args)


@contextlib.contextmanager
def experiment_refs_lock(path: Path) -> Iterator[None]:
    """Held around every DVC command that writes or reads a repository's experiment refs. Parallel
    trials share one git repository: two `dvc exp save` at once raced on its refs (DVC failed with
    "'NoneType' object is not subscriptable"), and a `dvc exp show` during a save saw its temporary
    refs ("unknown Git revision 'refs/exps/exec/EXEC_BASELINE'"), so they take turns."""
    import fcntl

    common = Path(git(path, "rev-parse", "--git-common-dir"))
    common = common if common.is_absolute() else (path / common)
    with open(common / "uqa-exp-save.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def experiment_results(root: Path) -> dict[str, dict[str, Any]]:
    """{experiment name: {rev, params, metrics}} from `dvc exp show --json` in the project."""
    import json

    from uqa.params.schema import PARAMS_FILE

    with experiment_refs_lock(Path(root)):
        shown = json.loads(_dvc(Path(root), "exp", "show", "--json") or "[]")
    found = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                found[rev.get("name") or exp.get("name")] = {
                    "rev": rev.get("rev"),
                    "params": ((data.get("params") or {}).get(PARAMS_FILE) or {}).get("data", {}),
                    "metrics": ((data.get("metrics") or {}).get(str(layout.METRICS_FILE)) or {}).get("data", {}),
                }
    return found


@contextlib.contextmanager
def restored_experiment(root: Path, name: str, rev: str) -> Iterator[Path]:
    """A worktree at experiment `name` (commit `rev`) with the outputs the registration reads (its filtered
    validation set, model and metrics) checked out of the shared cache."""
    root = Path(root).resolve()
    worktree = root / EXPS_DIR / f"restore-{name}"
    if worktree.exists():
        git(root, "worktree", "remove", "--force", str(worktree))
    git(root, "worktree", "add", "--detach", "--quiet", str(worktree), rev)
    try:
        cache_dir = _dvc(root, "cache", "dir").strip() or str(root / ".dvc" / "cache")
        _dvc(worktree, "cache", "dir", "--local", cache_dir)
        # filter too: the winner's validation set, on which the gate re-scores prod (uqa/registry/evalset.py)
        _dvc(worktree, "checkout", "--quiet", "filter", "train", "evaluate")
        yield worktree
    finally:
        with contextlib.suppress(UserError):
            git(root, "worktree", "remove", "--force", str(worktree))
        shutil.rmtree(worktree, ignore_errors=True)


def is_snapshot(root: Path, rev: str) -> bool:
    return SNAPSHOT_TRAILER in git(root, "log", "-1", "--format=%B", rev)


DVC_RECORD_NAMES = {"dvc.yaml", "dvc.lock", "params.yaml", ".dvcignore", ".gitignore"}


def dvc_tracked(root: Path):
    """A test for paths (relative to `root`) that DVC tracks: its records (dvc.yaml, dvc.lock, params,
    .dvc files, the .gitignore entries it writes) and the outputs dvc.yaml declares (e.g. the
    `cache: false` ones such as data/source.json, which git, not the DVC cache, carries). What a
    snapshot or an experiment's worktree carries besides git's tracked files; nothing else untracked."""
    import yaml

    outs: set[str] = set()
    try:
        stages = (yaml.safe_load((Path(root) / "dvc.yaml").read_text(encoding="utf-8")) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        stages = {}
    for spec in stages.values() if isinstance(stages, dict) else []:
        for key in ("outs", "metrics", "plots"):
            for entry in (spec or {}).get(key) or [] if isinstance(spec, dict) else []:
                name = next(iter(entry)) if isinstance(entry, dict) else entry
                if isinstance(name, str):
                    outs.add(Path(name).as_posix().rstrip("/"))

    def tracked(path: str) -> bool:
        posix = Path(path).as_posix()
        name = Path(path).name
        if name in DVC_RECORD_NAMES or name.endswith(".dvc") or posix == ".dvc/config":
            return True
        return any(posix == out or posix.startswith(out + "/") for out in outs)

    return tracked


def snapshot_commit(root: Path, message: str) -> str:
    """A commit of the project's workspace as the pipeline sees it: HEAD plus every change to a tracked
    file and the untracked files DVC tracks (`dvc_tracked`: e.g. the dvc.lock the data stages just wrote), made with a
    temporary index so the user's branch, index and files are untouched; HEAD itself when nothing
    changed. Any other untracked file (an .env, notes, keys) stays out: the commit goes to a git remote."""
    import tempfile

    root = Path(root).resolve()
    tracked = dvc_tracked(root)
    untracked = [path for status, path in _workspace_changes(root) if status == "??" and tracked(path)]
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, GIT_INDEX_FILE=str(Path(tmp) / "index"))  # the user's index is untouched
        git(root, "read-tree", "HEAD", env=env)
        git(root, "add", "-u", env=env)  # tracked files: changed and deleted
        for i in range(0, len(untracked), 100):
            git(root, "add", "--", *untracked[i:i + 100], env=env)
        tree = git(root, "write-tree", env=env)
        if tree == git(root, "rev-parse", "HEAD^{tree}"):
            return git(root, "rev-parse", "HEAD")
        return git(root, "commit-tree", tree, "-p", "HEAD", "-m", f"{message}\n\n{SNAPSHOT_TRAILER}", env=env)


def remote_url(root: Path, git_remote: str) -> str:
    """The remote's URL without credentials (it is logged and handed to trials as a job variable): a
    trial's machine authenticates with its own (git credential helper, SSH key)."""
    try:
        return strip_url_credentials(git(root, "remote", "get-url", git_remote))
    except UserError:
        raise UserError(f"{root} has no git remote {git_remote!r} (git remote add {git_remote} URL): trials on "
                        "other machines clone the project from it and push their experiments back to it") from None


def publish_commit(root: Path, git_remote: str, sha: str, ref: str) -> None:
    """Push commit `sha` to `git_remote` as `ref` (not a branch: the user's branches are untouched)."""
    git(root, "push", "--quiet", "--force", git_remote, f"{sha}:{ref}")


def unpublish(root: Path, git_remote: str, ref: str) -> None:
    git(root, "push", "--quiet", git_remote, "--delete", ref)


def push_experiment(root: Path, name: str, git_remote: str = GIT_REMOTE) -> None:
    """`dvc exp push`: the experiment's commit to the git remote, its outputs to the default DVC remote."""
    with experiment_refs_lock(Path(root)):
        _dvc(Path(root), "exp", "push", git_remote, name)


def pull_experiments(root: Path, git_remote: str, names: list[str], outputs: bool) -> None:
    """`dvc exp pull` of experiments other machines pushed: their commits (params, metrics, dvc.lock),
    and with `outputs` their outputs (models) from the DVC remote too."""
    with experiment_refs_lock(Path(root)):
        _dvc(Path(root), "exp", "pull", "--force", *([] if outputs else ["--no-cache"]), git_remote, *names)
