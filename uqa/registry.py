"""The model registry: versioned model directories, with GTO versions and stages in git projects.

Layout of the store (a DVC-tracked output of the `register` stage, so `dvc push` ships it):
    registry/<name>/<version>/   model weights, config, tokenizer, README.md (model card), registration.json
    registry/<name>/index.json   every version with its metrics and whether it was promoted

In a git project each version is also a GTO version: a commit on the branch `uqa-registry` (made with
git plumbing: the user's branch, index and working tree are never touched) holding the version's
model card and registration record, tagged `<name>@vX.Y.Z`; promotion is `gto assign --stage prod`
(tag `<name>#prod#N`). GTO allows one version per commit, which is why each version gets its own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uqa.errors import UserError

REGISTRY_DIR = Path("registry")
REGISTRY_BRANCH = "refs/heads/uqa-registry"
PROD = "prod"
AUTHOR = ("uqa-pipeline", "uqa-pipeline@localhost")


def is_git_repo(root: Path) -> bool:
    r = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True)
    return r.returncode == 0 and Path(r.stdout.strip()).resolve() == Path(root).resolve()


def _git(root: Path, *args: str, env: dict[str, str] | None = None, input: str | None = None) -> str:
    r = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, env=env, input=input)
    if r.returncode != 0:
        raise UserError(f"git {' '.join(args[:2])} failed in {root}: {r.stderr.strip()}")
    return r.stdout.strip()


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

    def index(self) -> dict[str, Any]:
        if self.index_path.exists():
            return json.loads(self.index_path.read_text())
        return {"name": self.name, "versions": []}

    def versions(self) -> list[dict[str, Any]]:
        return self.index()["versions"]

    def version_dir(self, version: str) -> Path:
        return self.store / version

    # -- stages ------------------------------------------------------------------------------------
    def stage_version(self, stage: str = PROD) -> str | None:
        """The version currently in `stage` (GTO in a git project, else the index)."""
        if self.uses_git:
            import gto.api

            try:
                found = gto.api.find_versions_in_stage(str(self.root), self.name, stage)
            except Exception:  # no tags yet, or the artifact is unknown to GTO
                found = None
            if found:
                return found[0].version if isinstance(found, list) else found.version
            return None
        for entry in reversed(self.versions()):
            if stage in entry.get("stages", []):
                return entry["version"]
        return None

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


def resolve_model(spec: str, root: Path = Path("."), name: str | None = None) -> Path:
    """A model directory from: a path; `prod` (or any stage); `<name>:<stage>`; `<name>@<version>`."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    artifact = name
    stage = version = None
    if "@" in spec:
        artifact, version = spec.split("@", 1)
    elif ":" in spec:
        artifact, stage = spec.split(":", 1)
    else:
        stage = spec
    if artifact is None:
        artifact = _default_artifact(root)
    registry = Registry(root, artifact)
    if stage is not None:
        version = registry.stage_version(stage)
        if version is None:
            raise UserError(
                f"no version of {artifact!r} is in stage {stage!r} in {Path(root).resolve()} "
                f"(run the pipeline, or `uqa demo`, first; `uqa registry` lists versions)"
            )
    assert version is not None
    directory = registry.version_dir(version)
    if not (directory / "config.json").exists():
        raise UserError(
            f"{artifact}@{version} is registered but {directory} is not here: `dvc pull` restores the registry"
        )
    return directory


def _default_artifact(root: Path) -> str:
    try:
        from uqa.params import load_params

        return load_params(Path(root) / "params.yaml").register.name
    except UserError:
        return "uqa-qa"
