"""`uqa run --push`: the git remote and the DVC remote are the record of the registry.

A run on any machine (a fresh clone on a docker or k8s worker, a second box) first takes what it needs
from the remotes, then publishes what it made, so that every other machine sees it:

- **before** (`sync_from_remotes`): the registry branch and this artifact's GTO tags from the git remote,
  the registry directory the branch names (its `registry.dvc`) from the DVC remote, and DVC's
  run-cache (`dvc fetch --run-cache`): a stage whose deps and params match a published run is restored
  instead of run again (flows/pipeline.py: run_stage);
- **after** (`publish`): the DVC outputs and the run-cache first (`dvc push --run-cache`), then a
  commit on the registry branch naming the registry directory (`registry.dvc`), the index
  (`NAME/index.json`) and the DVC remote (`.dvc/config`), then the branch and the new tags in one
  atomic `git push`. So a tag a replica sees always has its files on the DVC remote, and a plain
  `git clone` knows every version (`uqa registry show` reads the index from the branch).

The registry branch on the remote is the lock. A push is never forced: when another machine
published first, git rejects ours (the branch no longer fast-forwards, or the tag exists), and the
caller re-gates: `PublishConflict`, then `sync_from_remotes` puts the remote's registry in place
(dropping the version registered here but never published), and the register stage runs again
against the prod that is current now. A worker killed anywhere in between leaves the remotes as
they were (DVC objects are content-addressed and unreferenced until the atomic git push), and the
next run publishes what this machine still holds, or re-gates it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from uqa import layout
from uqa.errors import UserError, first_line
from uqa.ops.atomic import replace_dir
from uqa.ops.faults import failpoint
from uqa.ops.git import GitError, git, git_run
from uqa.ops.redact import strip_url_credentials
from uqa.registry.store import REGISTRY_BRANCH, Registry, git_identity, remote_branch_ref

log = logging.getLogger(__name__)

POINTER_FILE = "registry.dvc"  # on the registry branch: the DVC hash of the whole registry directory
DVC_CONFIG = ".dvc/config"  # on the registry branch too: `dvc get URL registry/... --rev uqa-registry` works
GIT_TIMEOUT_S = 600
SIDE_REFS = "refs/uqa-remote"  # where the remote's refs are fetched before they are compared with ours
CONFLICT_REASONS = ("(non-fast-forward)", "(already exists)", "(fetch first)", "(stale info)")  # git push --porcelain


class PublishConflict(UserError):
    """Another machine published to the registry branch (or the same tag) first: re-gate and retry."""


def require_remotes(root: Path, git_remote: str) -> None:
    """The git remote and a default DVC remote are set, or one error saying which to add."""
    from uqa.workspace.dvc_ops import default_remote, dvc_repo

    r = git_run(root, "remote", "get-url", git_remote)
    if r.returncode != 0:
        raise UserError(f"{root}: `uqa run --push` publishes to the git remote {git_remote!r} and the default DVC "
                        f"remote, and {git_remote!r} is not set: git remote add {git_remote} URL")
    with dvc_repo(root) as repo:
        if not default_remote(repo):
            raise UserError(f"{root}: `uqa run --push` publishes the models and data to the default DVC remote, "
                            "and none is set: dvc remote add -d NAME URL (s3://..., a directory, ...), then commit "
                            ".dvc/config")


# -- what the remote and this clone hold -----------------------------------------------------------------


@dataclass(frozen=True)
class Refs:
    """The registry branch (a commit sha, or None) and this artifact's GTO tags (ref -> object sha)."""

    branch: str | None
    tags: dict[str, str] = field(default_factory=dict)

    def clashing_tags(self, other: Refs) -> list[str]:
        """Our tags that `other` holds naming another object: the same version published twice."""
        return [t for t, sha in self.tags.items() if t in other.tags and other.tags[t] != sha]


def _artifact_tag(ref: str, name: str) -> bool:
    return ref.startswith((f"refs/tags/{name}@", f"refs/tags/{name}#"))


def remote_refs(root: Path, git_remote: str, name: str) -> Refs:
    out = git(root, "ls-remote", "--heads", "--tags", git_remote, timeout=GIT_TIMEOUT_S)
    refs = {}
    for line in out.splitlines():
        sha, _, ref = line.partition("\t")
        if ref and not ref.endswith("^{}"):
            refs[ref] = sha
    return Refs(refs.get(REGISTRY_BRANCH), {r: s for r, s in refs.items() if _artifact_tag(r, name)})


def local_refs(root: Path, name: str) -> Refs:
    out = git(root, "for-each-ref", "--format=%(refname) %(objectname)", REGISTRY_BRANCH,
              f"refs/tags/{name}@*", f"refs/tags/{name}#*")
    refs = dict(line.split(" ", 1) for line in out.splitlines() if line)
    return Refs(refs.get(REGISTRY_BRANCH), {r: s for r, s in refs.items() if _artifact_tag(r, name)})


def _is_ancestor(root: Path, a: str, b: str) -> bool:
    return git_run(root, "merge-base", "--is-ancestor", a, b).returncode == 0


def _fetch(root: Path, git_remote: str, remote: Refs) -> None:
    """The remote's registry branch and tags, as objects here (into side refs: ours are compared first)."""
    specs = [f"+{ref}:{SIDE_REFS}/{ref.removeprefix('refs/')}" for ref in remote.tags]
    if remote.branch:
        specs.append(f"+{REGISTRY_BRANCH}:{remote_branch_ref(git_remote)}")
    if specs:
        git(root, "fetch", "--quiet", "--no-tags", git_remote, *specs, timeout=GIT_TIMEOUT_S)


def _drop_side_refs(root: Path) -> None:
    refs = git(root, "for-each-ref", "--format=%(refname)", SIDE_REFS).split()
    if refs:
        git(root, "update-ref", "--stdin", input="".join(f"delete {r}\n" for r in refs))


# -- before the run ------------------------------------------------------------------------------------


@dataclass
class SyncReport:
    state: str  # empty | unpublished | same | ahead | fresh | behind | diverged
    registry_restored: bool = False
    discarded: list[str] = field(default_factory=list)  # versions registered here, never published
    run_cache_entries: int = 0

    def describe(self, name: str) -> str:
        said = {
            "empty": "nothing is published yet",
            "unpublished": "nothing is published yet; this clone's registry will be",
            "same": "this clone's registry is the published one",
            "ahead": "this clone holds registrations not yet published; they will be",
            "fresh": "registry taken from the remotes",
            "behind": "registry brought up to the published one",
            "diverged": "registry taken from the remotes (another machine published since this clone registered)",
        }[self.state]
        extra = f"; dropped {', '.join(self.discarded)} (registered here, never published)" if self.discarded else ""
        return f"{name}: {said}{extra}; {self.run_cache_entries} run-cache entries fetched"


def sync_from_remotes(root: Path, name: str, git_remote: str) -> SyncReport:
    """Make this clone's registry the published one (see the module docstring): fetch the registry branch
    and tags, compare them with ours, take the remote's where ours is not ahead of it, and fetch the
    run-cache. Registrations made here and never published stay when the remote has not moved since
    (the next publish sends them), and are dropped when it has (the run registers its model again)."""
    root = Path(root).resolve()
    _unshallow(root, git_remote)
    remote = remote_refs(root, git_remote, name)
    _fetch(root, git_remote, remote)
    try:
        local = local_refs(root, name)
        state = _compare(root, local, remote)
        report = SyncReport(state)
        if state in ("fresh", "behind", "diverged"):
            report.discarded = _take_remote(root, name, local, remote)
            report.registry_restored = restore_registry(root, remote.branch, name)
        elif state == "same" and _index_differs(root, name, remote.branch):
            report.registry_restored = restore_registry(root, remote.branch, name)
    finally:
        _drop_side_refs(root)
    report.run_cache_entries = fetch_run_cache(root)
    log.info("sync from %s: %s", git_remote, report.describe(name))
    return report


def _unshallow(root: Path, git_remote: str) -> None:
    """A shallow clone (Prefect's git_clone step) gets the branch's history: the lineage's commit and
    DVC experiments (retention) walk it; a full clone is left as it is."""
    if git(root, "rev-parse", "--is-shallow-repository") == "true":
        git(root, "fetch", "--quiet", "--unshallow", git_remote, timeout=GIT_TIMEOUT_S)


def _compare(root: Path, local: Refs, remote: Refs) -> str:
    if remote.branch is None:
        return "unpublished" if local.branch else "empty"
    if local.branch is None:
        return "fresh"
    clash = local.clashing_tags(remote)
    if local.branch == remote.branch:
        return "diverged" if clash else "same"
    if _is_ancestor(root, local.branch, remote.branch):
        return "behind"
    if _is_ancestor(root, remote.branch, local.branch) and not clash:
        return "ahead"
    return "diverged"


def _take_remote(root: Path, name: str, local: Refs, remote: Refs) -> list[str]:
    """Our registry branch and this artifact's tags become the remote's; returns the versions dropped."""
    updates = [f"update {REGISTRY_BRANCH} {remote.branch}\n"]
    dropped = []
    for tag, sha in local.tags.items():
        if remote.tags.get(tag) != sha:
            if tag not in remote.tags:
                updates.append(f"delete {tag}\n")
            if "@" in tag:
                dropped.append(tag.rsplit("@", 1)[1])
    for tag, sha in remote.tags.items():
        if local.tags.get(tag) != sha:
            updates.append(f"update {tag} {sha}\n")
    git(root, "update-ref", "--stdin", input="".join(updates))
    if dropped:
        log.warning("%s: %s was registered in this clone but never published, and the remote has moved on since: "
                    "dropped here; this run registers its model again against the published registry",
                    name, ", ".join(sorted(dropped)))
    return sorted(dropped)


def _published_file(root: Path, commit: str, path: str) -> bytes | None:
    r = git_run(root, "cat-file", "blob", f"{commit}:{path}", text=False)
    return r.stdout if r.returncode == 0 else None


def _index_differs(root: Path, name: str, commit: str) -> bool:
    published = _published_file(root, commit, f"{name}/index.json")
    index = Registry(root, name).index_path
    return published is not None and (not index.is_file() or index.read_bytes() != published)


def restore_registry(root: Path, commit: str, name: str) -> bool:
    """The registry directory that `commit` (on the registry branch) names, from the DVC remote, in place
    of ours (renamed in whole when complete). False when the commit names none (nothing to restore)."""
    from dvc.repo import Repo

    if _published_file(root, commit, POINTER_FILE) is None:
        if _published_file(root, commit, f"{name}/index.json") is None:
            return False
        raise UserError(f"the registry branch at {commit[:12]} has an index but no {POINTER_FILE}: publish it again "
                        "from the machine that registered it (`uqa run --push` there)")
    final = Path(root) / layout.REGISTRY_DIR
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        Repo.get(str(root), str(layout.REGISTRY_DIR), out=str(tmp / "registry"), rev=commit)
        replace_dir(tmp / "registry", final)
    except UserError:
        raise
    except Exception as exc:  # DVC's own errors: one line, no credentials
        raise UserError(strip_url_credentials(
            f"could not download the published registry ({POINTER_FILE} at {commit[:12]}) from the DVC remote "
            f"({type(exc).__name__}: {first_line(exc)})")) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("registry/ restored from the DVC remote as the registry branch names it (%s)", commit[:12])
    return True


def fetch_run_cache(root: Path) -> int:
    """`dvc fetch --run-cache` without the outputs: the run entries only (small files); a stage restored
    from one of them pulls its own outputs then (uqa.workspace.dvc_ops.dvc_restore)."""
    from uqa.workspace.dvc_ops import dvc_repo

    with dvc_repo(root) as repo:
        try:
            return len(repo.stage_cache.pull(None))
        except Exception as exc:  # noqa: BLE001 - a missing run-cache only means stages run again
            log.warning("the run-cache could not be fetched (%s): stages whose results are published run again",
                        first_line(strip_url_credentials(str(exc))))
            return 0


# -- after the run -------------------------------------------------------------------------------------


def registry_pointer(root: Path) -> dict[str, Any]:
    """The `registry` output as dvc.lock records it, checked against the directory (no unrecorded change)."""
    from uqa.workspace.dvc_ops import dvc_status

    lock = yaml.safe_load((Path(root) / "dvc.lock").read_text(encoding="utf-8")) if (Path(root) / "dvc.lock").is_file() \
        else None
    outs = (((lock or {}).get("stages") or {}).get("register") or {}).get("outs") or []
    entry = next((o for o in outs if isinstance(o, dict) and o.get("path") == str(layout.REGISTRY_DIR)), None)
    if entry is None or not entry.get("md5"):
        raise UserError(f"{root}/dvc.lock records no registry output: run the register stage (uqa run) first")
    changed = dvc_status(root, "register")
    for item in changed.get("register", []) if isinstance(changed, dict) else []:
        if isinstance(item, dict) and str(layout.REGISTRY_DIR) in (item.get("changed outs") or {}):
            raise UserError(f"{root}/registry differs from what dvc.lock records: run `dvc commit register` (or "
                            "`uqa run`) so that what is pushed is what is recorded")
    return {k: entry[k] for k in ("md5", "size", "nfiles", "hash", "path") if k in entry}


def _pointer_files(root: Path, name: str) -> dict[str, bytes]:
    pointer = yaml.safe_dump({"outs": [registry_pointer(root)]}, sort_keys=False).encode()
    index = Registry(root, name).index_path
    files = {POINTER_FILE: pointer, f"{name}/index.json": index.read_bytes()}
    config = Path(root) / DVC_CONFIG
    if config.is_file():
        files[DVC_CONFIG] = config.read_bytes()
    return files


def commit_pointer(root: Path, name: str) -> str | None:
    """A commit on the registry branch naming the registry directory, the index and the DVC remote as they
    are now; None when the branch's tip already says so (or there is no registry branch yet)."""
    root = Path(root)
    parent = local_refs(root, name).branch
    if parent is None:
        return None
    files = _pointer_files(root, name)
    if all(_published_file(root, parent, path) == data for path, data in files.items()):
        return None
    author, email = git_identity(root)
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, GIT_INDEX_FILE=str(Path(tmp) / "index"), GIT_AUTHOR_NAME=author,
                   GIT_AUTHOR_EMAIL=email, GIT_COMMITTER_NAME=author, GIT_COMMITTER_EMAIL=email)
        git(root, "read-tree", parent, env=env)
        for path, data in files.items():
            blob = git(root, "hash-object", "-w", "--stdin", input=data.decode("utf-8"))
            git(root, "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", env=env)
        tree = git(root, "write-tree", env=env)
        commit = git(root, "commit-tree", tree, "-p", parent, "-m",
                     f"publish {name}: the registry directory, index and DVC remote\n\n"
                     "registry.dvc names the registry directory on the DVC remote: "
                     "dvc get URL registry/NAME/VERSION --rev uqa-registry", env=env)
    git(root, "update-ref", REGISTRY_BRANCH, commit, parent)  # only if nobody moved it meanwhile
    return commit


@dataclass
class PublishReport:
    dvc_pushed: int
    branch: str | None
    tags: list[str]

    def describe(self, git_remote: str) -> str:
        tags = ", ".join(t.removeprefix("refs/tags/") for t in self.tags) or "no new tags"
        return (f"published to {git_remote} (registry branch {self.branch[:12] if self.branch else 'unchanged'}, "
                f"{tags}) after {self.dvc_pushed} file(s) to the DVC remote")


def publish(root: Path, name: str, git_remote: str) -> PublishReport:
    """DVC first, then git, atomically and never forced (see the module docstring). PublishConflict when
    another machine published first; a GitError for anything else (the registration stays here and the
    next `uqa run --push` publishes it)."""
    from uqa.workspace.dvc_ops import push_run_cache

    root = Path(root).resolve()
    remote = remote_refs(root, git_remote, name)
    local = local_refs(root, name)
    _check_fast_forward(root, git_remote, name, local, remote)
    failpoint("publish.before_dvc_push")
    pushed = push_run_cache(root)
    failpoint("publish.after_dvc_push")
    commit_pointer(root, name)
    failpoint("publish.after_pointer_commit")
    local = local_refs(root, name)
    # versions first, then stage assignments (uqa-qa@v0.0.2 before uqa-qa#prod#2): how they are reported
    specs = [f"{t}:{t}" for t, sha in sorted(local.tags.items(), key=lambda item: ("#" in item[0], item[0]))
             if remote.tags.get(t) != sha]
    if local.branch and local.branch != remote.branch:
        specs.insert(0, f"{REGISTRY_BRANCH}:{REGISTRY_BRANCH}")
    if specs:
        r = git_run(root, "push", "--atomic", "--porcelain", git_remote, *specs, timeout=GIT_TIMEOUT_S)
        if r.returncode != 0:
            now = remote_refs(root, git_remote, name)
            if now != remote or any(why in r.stdout for why in CONFLICT_REASONS):
                raise PublishConflict(f"{name}: another run published to {git_remote} first "
                                      f"({_moved(remote, now)}): re-gating against it")
            said = " ".join((r.stderr or r.stdout).split())
            raise GitError(strip_url_credentials(
                f"git push to {git_remote} failed: {first_line(said, 500)}; the registration is kept here and the "
                "next `uqa run --push` publishes it"))
    failpoint("publish.after_git_push")
    return PublishReport(pushed, local.branch if local.branch != remote.branch else None,
                         [s.split(":", 1)[0] for s in specs if s.startswith("refs/tags/")])


def _check_fast_forward(root: Path, git_remote: str, name: str, local: Refs, remote: Refs) -> None:
    """Our branch must descend from the remote's and our tags must not name other objects than its."""
    clash = local.clashing_tags(remote)
    behind = False
    if remote.branch and remote.branch != local.branch:
        _fetch(root, git_remote, Refs(remote.branch))
        behind = local.branch is None or not _is_ancestor(root, remote.branch, local.branch)
    if clash or behind:
        raise PublishConflict(f"{name}: {git_remote} has moved since this run synced "
                              f"({', '.join(t.removeprefix('refs/tags/') for t in clash) or 'its registry branch'}): "
                              "re-gating against it")


def _moved(before: Refs, now: Refs) -> str:
    new = sorted(t.removeprefix("refs/tags/") for t in now.tags if t not in before.tags)
    return f"new there: {', '.join(new)}" if new else "its registry branch moved"
