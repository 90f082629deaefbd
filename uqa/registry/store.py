"""The model registry: versioned model directories, with GTO versions and stages in git projects.

Layout of the store (a DVC-tracked output of the `register` stage, so `dvc push` ships it):
    registry/<name>/<version>/   model weights, config, tokenizer, README.md (model card), registration.json
    registry/<name>/index.json   every version with its metrics and whether it was promoted

In a git project each version is also a GTO version: a commit on the branch `uqa-registry` (made with
git plumbing: the user's branch, index and working tree are never touched) holding the version's
model card and registration record, tagged `<name>@vX.Y.Z`; promotion is `gto assign --stage prod`
(tag `<name>#prod#N`). GTO allows one version per commit, which is why each version gets its own.

The registry fails closed: when the GTO tags, the index and the version directories disagree, or GTO
cannot read the tags, it raises RegistryInconsistent (a one-line UserError saying what disagrees and
how to repair it) instead of guessing; a guess such as "no prod yet" would promote any model."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uqa import layout
from uqa.errors import UserError, first_line
from uqa.ops.git import GIT_REMOTE, git_run
from uqa.ops.git import git as _git


class RegistryInconsistent(UserError):
    """The GTO tags and the registry files disagree (or cannot be read): nothing is registered or promoted."""

REGISTRY_DIR = layout.REGISTRY_DIR
VERSION = re.compile(r"v\d+\.\d+\.\d+")  # a registered version: vMAJOR.MINOR.PATCH, as GTO names them
REGISTRY_BRANCH = "refs/heads/uqa-registry"


def remote_branch_ref(git_remote: str = GIT_REMOTE) -> str:
    """Where a fetch of `git_remote` keeps its registry branch (refs/remotes/origin/uqa-registry)."""
    return f"refs/remotes/{git_remote}/{REGISTRY_BRANCH.removeprefix('refs/heads/')}"
PROD = "prod"
AUTHOR = ("uqa-pipeline", "uqa-pipeline@localhost")


def is_git_repo(root: Path) -> bool:
    """Whether `root` is the top of a git repository. Only git's own "not a git repository" means no:
    any other git error (e.g. "detected dubious ownership", a broken config) is raised, because
    reading the registry from its index instead would ignore the GTO tags that decide prod."""
    try:
        r = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True)
    except FileNotFoundError:
        if (Path(root) / ".git").exists():
            raise RegistryInconsistent(f"{Path(root).resolve()} is a git repository but git is not installed: "
                                       "install git (the registry's stages are GTO tags)") from None
        return False
    if r.returncode != 0:
        if "not a git repository" in r.stderr.lower():
            return False
        raise RegistryInconsistent(
            f"git cannot read {Path(root).resolve()} ({' '.join(r.stderr.split())[:300]}): fix that first (for "
            f"\"dubious ownership\": `git config --global --add safe.directory {Path(root).resolve()}`); the "
            "registry is never read without its GTO tags on a git error")
    return Path(r.stdout.strip()).resolve() == Path(root).resolve()


def _checked_index(text: str, where: str, restore: str) -> dict[str, Any]:
    """A registry index, or RegistryInconsistent naming `where` and how to `restore` it."""
    try:
        index = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RegistryInconsistent(f"{where} is unreadable ({exc}): {restore}") from None
    versions = index.get("versions") if isinstance(index, dict) else None
    if not isinstance(versions, list):
        raise RegistryInconsistent(f"{where} is not a registry index (no 'versions' list): {restore}")
    for i, v in enumerate(versions):  # the keys every reader (gate, `uqa registry`) relies on
        if not (isinstance(v, dict) and isinstance(v.get("version"), str) and isinstance(v.get("metrics"), dict)
                and "promoted" in v and "reason" in v):
            raise RegistryInconsistent(
                f"{where}: versions[{i}] is not a version record (it needs 'version', 'metrics', "
                f"'promoted', 'reason'): {restore}")
    return index


def _finite_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def git_identity(root: Path) -> tuple[str, str]:
    name = subprocess.run(["git", "config", "user.name"], cwd=root, capture_output=True, text=True).stdout.strip()
    email = subprocess.run(["git", "config", "user.email"], cwd=root, capture_output=True, text=True).stdout.strip()
    return (name or AUTHOR[0], email or AUTHOR[1])


def next_version(versions: list[str]) -> str:
    """Semver patch bump of the highest version (v0.0.1 first)."""
    parsed = []
    for v in versions:
        m = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)", v)
        if m:
            parsed.append(tuple(int(x) for x in m.groups()))
    if not parsed:
        return "v0.0.1"
    major, minor, patch = max(parsed)
    return f"v{major}.{minor}.{patch + 1}"


@dataclass
class Registry:
    root: Path
    name: str

    @property
    def store(self) -> Path:
        return Path(self.root) / REGISTRY_DIR / self.name

    @property
    def index_path(self) -> Path:
        return self.store / "index.json"

    @property
    def uses_git(self) -> bool:
        return is_git_repo(Path(self.root))

    def version_dirs(self) -> list[str]:
        """The version directories in the store (vX.Y.Z), whatever the index says."""
        if not self.store.is_dir():
            return []
        return sorted(p.name for p in self.store.iterdir() if p.is_dir() and VERSION.fullmatch(p.name))

    def index(self) -> dict[str, Any]:
        restore = "restore it from DVC (`dvc pull registry`) or from a backup"
        if not self.index_path.exists():
            found = self.version_dirs()
            if found:  # "no index" would mean "no prod", and v0.0.1 would be written over an existing one
                raise RegistryInconsistent(
                    f"{self.store} has version directories ({', '.join(found)}) but no index.json: {restore}, "
                    f"or move those directories away if they are not versions of {self.name}")
            published = self.published_index()
            return published if published is not None else {"name": self.name, "versions": []}
        try:
            text = self.index_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RegistryInconsistent(f"{self.index_path} is unreadable ({exc}): {restore}") from None
        return _checked_index(text, str(self.index_path), restore)

    def published_index(self) -> dict[str, Any] | None:
        """The index on the registry branch (here, or as fetched from the git remote: a plain `git clone`
        has it), for a clone whose registry/ was never pulled: `uqa registry` and `uqa serve` read it there.
        Registering still needs the files (the gate checks prod's), which `uqa run --push` restores."""
        if not self.uses_git:
            return None
        for ref in (REGISTRY_BRANCH, remote_branch_ref()):
            r = git_run(Path(self.root), "cat-file", "blob", f"{ref}:{self.name}/index.json")
            if r.returncode == 0:
                return _checked_index(r.stdout, f"{ref}:{self.name}/index.json",
                                      "publish the registry again (`uqa run --push`)")
        return None

    def versions(self) -> list[dict[str, Any]]:
        return self.index()["versions"]

    def version_dir(self, version: str) -> Path:
        return self.store / version

    # -- stages ------------------------------------------------------------------------------------
    def git_tags(self) -> list[str]:
        """This artifact's GTO tags (`<name>@<version>`, `<name>#<stage>#N`, ...) in the git repo."""
        return _git(Path(self.root), "tag", "-l", f"{self.name}@*", f"{self.name}#*").split()

    def _gto(self, what: str, call: Callable[[], Any]) -> Any:
        """A GTO call; its failures are inconsistencies, never "no versions" (that case is answered by the
        tag list before GTO is asked: GTO raises the same way for "no tags yet" and for a broken tag)."""
        try:
            return call()
        except Exception as exc:
            raise RegistryInconsistent(
                f"GTO cannot read the {what} of {self.name} in {Path(self.root).resolve()} "
                f"({type(exc).__name__}: {first_line(exc)}): list the tags with "
                f"`git tag -l '{self.name}@*' '{self.name}#*'`, delete the broken one (`git tag -d TAG`) "
                f"or fetch them again (`git fetch --tags --force`)") from None

    def gto_versions(self) -> list[str]:
        """Versions GTO knows (git projects; [] when the artifact has no tags yet)."""
        if not self.uses_git or not self.git_tags():
            return []
        import gto.api

        return [v["version"] for v in self._gto("versions", lambda: gto.api.show(str(self.root), self.name))]

    def stage_assignment(self, stage: str = PROD) -> tuple[str, str | None] | None:
        """(version, GTO tag that put it there; None outside git) of the version in `stage`, or None."""
        if self.uses_git:
            if not self.git_tags():
                return None
            import gto.api

            found = self._gto(f"'{stage}' stage",
                              lambda: gto.api.find_versions_in_stage(str(self.root), self.name, stage))
            if not found:
                return None
            vstage = found[0] if isinstance(found, list) else found
            tags = [a.tag for a in getattr(vstage, "assignments", []) if getattr(a, "tag", None)]
            return vstage.version, (tags[-1] if tags else None)
        for entry in reversed(self.versions()):
            if stage in entry.get("stages", []):
                return entry["version"], None
        return None

    def stage_version(self, stage: str = PROD) -> str | None:
        """The version currently in `stage` (GTO in a git project, else the index)."""
        found = self.stage_assignment(stage)
        return found[0] if found else None

    def verified_stage(self, stage: str = PROD) -> tuple[str | None, dict[str, Any] | None]:
        """The version in `stage` and its index record, checked against the tags and the files.

        The promotion gate compares a new model with this record: when any of it is missing, the
        registry is inconsistent and registration must stop (fail closed), not treat it as "no prod"."""
        index = self.index()
        if self.uses_git and index["versions"] and not self.git_tags():
            raise RegistryInconsistent(
                f"{self.index_path} lists {len(index['versions'])} version(s) of {self.name} but git has no "
                f"'{self.name}@*' tags: fetch them (`git fetch --tags`), or, if this registry was made "
                f"outside git, recreate them with `gto register` / `gto assign`")
        found = self.stage_assignment(stage)
        if found is None:
            if self.uses_git:
                self._tags_agree_with_index(index, stage, found)
            return None, None
        version, tag = found
        if self.uses_git:
            unassign = f"`gto deprecate {self.name} {version} {stage}`" + (f" or `git tag -d '{tag}'`" if tag else "")
        else:
            unassign = f"remove '{stage}' from its stages in {self.index_path}"
        where = f"{self.name} {version} is in {stage}" + (f" (tag '{tag}')" if tag else "")
        record = self.record(version)
        if record is None:
            raise RegistryInconsistent(
                f"{where} but {self.index_path} has no record of it: restore the index (`dvc pull registry`), "
                f"or take {version} out of {stage} ({unassign}) and rerun")
        f1 = record["metrics"].get("f1")
        if not _finite_number(f1):
            raise RegistryInconsistent(
                f"{where} but its record in {self.index_path} has no numeric metrics.f1 (got {f1!r}): "
                f"restore the index (`dvc pull registry`), or take {version} out of {stage} ({unassign})")
        vdir = self.version_dir(version)
        missing = [n for n, ok in (("config.json", (vdir / "config.json").is_file()),
                                   ("*.safetensors weights", any(vdir.glob("*.safetensors")))) if not ok]
        if missing:
            raise RegistryInconsistent(
                f"{where} but {vdir} has no {' and no '.join(missing)}: restore the registry "
                f"(`dvc pull registry`), or take {version} out of {stage} ({unassign})")
        if self.uses_git:
            self._tags_agree_with_index(index, stage, found)
        return version, record

    def _tags_agree_with_index(self, index: dict[str, Any], stage: str, found: tuple[str, str | None] | None) -> None:
        """GTO's tags and the index must say the same: which versions exist and which one is in `stage`.
        A deleted or unfetched prod tag must not read as "no prod yet" (any model would be promoted)."""
        where = self.index_path
        tagged = set(self.gto_versions())
        recorded = [v["version"] for v in index["versions"]]
        untagged = [v["version"] for v in index["versions"] if v["version"] not in tagged and v.get("gto") != "pending"]
        if untagged:
            raise RegistryInconsistent(
                f"{where} records {', '.join(untagged)} of {self.name} but git has no tag "
                f"'{self.name}@{untagged[0]}': fetch the tags (`git fetch --tags`), or recreate it "
                f"(`gto register {self.name} COMMIT --version {untagged[0]}`, COMMIT being the commit 'register "
                f"{self.name} {untagged[0]}' on the uqa-registry branch), then rerun")
        unrecorded = sorted(tagged - set(recorded))
        if unrecorded:
            raise RegistryInconsistent(
                f"git has the tag '{self.name}@{unrecorded[0]}' but {where} has no record of {unrecorded[0]}: "
                f"restore the index (`dvc pull registry`), or delete the tag (`git tag -d '{self.name}@{unrecorded[0]}'`)"
                ", then rerun")
        in_index = [v["version"] for v in index["versions"] if stage in v.get("stages", [])]
        in_git = found[0] if found else None
        if in_index == ([in_git] if in_git else []):
            return
        if in_git is None:
            v = in_index[-1]
            raise RegistryInconsistent(
                f"{where} records {self.name} {v} in {stage} but git has no '{self.name}#{stage}#N' tag for it "
                f"(deleted, or not fetched): fetch the tags (`git fetch --tags`), or restore the assignment "
                f"(`gto assign {self.name} --version {v} --stage {stage}`), or, if {v} left {stage} on purpose, remove "
                f"'{stage}' from its stages in {where}; then rerun")
        said = ", ".join(in_index) if in_index else "no version"
        raise RegistryInconsistent(
            f"git's tags put {self.name} {in_git} in {stage} (tag '{found[1]}') but {where} records {said} there: "
            f"fetch the tags (`git fetch --tags --force`) and restore the index (`dvc pull registry`), or make "
            f"them agree (`gto assign {self.name} --version VERSION --stage {stage}`, or the stages in {where}); "
            "then rerun")

    def record(self, version: str) -> dict[str, Any] | None:
        for entry in self.versions():
            if entry["version"] == version:
                return entry
        return None

    # -- writing -----------------------------------------------------------------------------------
    def git_register(self, version: str, files: dict[str, Path], message: str) -> str:
        """Commit `files` (path in commit -> file) on the registry branch and tag it with GTO."""
        import gto.api

        root = Path(self.root)
        name, email = git_identity(root)
        with tempfile.TemporaryDirectory() as tmp:
            env = dict(os.environ, GIT_INDEX_FILE=str(Path(tmp) / "index"), GIT_AUTHOR_NAME=name,
                       GIT_AUTHOR_EMAIL=email, GIT_COMMITTER_NAME=name, GIT_COMMITTER_EMAIL=email)
            parent = subprocess.run(["git", "rev-parse", "--verify", "-q", REGISTRY_BRANCH], cwd=root,
                                    capture_output=True, text=True).stdout.strip()
            if parent:
                _git(root, "read-tree", parent, env=env)
            for path_in_commit, src in files.items():
                blob = _git(root, "hash-object", "-w", str(src))
                _git(root, "update-index", "--add", "--cacheinfo", f"100644,{blob},{path_in_commit}", env=env)
            tree = _git(root, "write-tree", env=env)
            args = ["commit-tree", tree, "-m", f"register {self.name} {version}"]
            if parent:
                args += ["-p", parent]
            commit = _git(root, *args, env=env)
            _git(root, "update-ref", REGISTRY_BRANCH, commit, *([parent] if parent else []))
        gto.api.register(str(root), self.name, ref=commit, version=version, message=message,
                         author=name, author_email=email)
        return commit

    def git_promote(self, version: str, message: str, stage: str = PROD) -> None:
        import gto.api

        name, email = git_identity(Path(self.root))
        gto.api.assign(str(self.root), self.name, stage, version=version, message=message,
                       author=name, author_email=email)
