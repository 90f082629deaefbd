"""The pipeline's stages in order, and DVC as the record of which are up to date.

The Prefect flow asks DVC whether a stage is up to date (`dvc status <stage>`: its deps, params and
outs match dvc.lock); if not, it calls the stage function and records the result with
`dvc commit <stage>`, exactly as `dvc repro` would have. One definition, one record, either way."""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uqa.params import Params

os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@dataclass(frozen=True)
class Stage:
    name: str
    module: str  # tasks.<module>: PARAMS/DEPS/OUTS, and run(params, params_file) that dvc.yaml's cmd calls too

    def load(self):
        return importlib.import_module(self.module)

    def run(self, params: Params, params_file: str) -> Any:
        return self.load().run(params, params_file)


STAGES: list[Stage] = [Stage(name, f"tasks.{name}") for name in
                       ("download", "filter", "tokenize", "train", "evaluate", "register")]
BY_NAME = {s.name: s for s in STAGES}


@contextlib.contextmanager
def working_dir(path: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def dvc_status(root: Path, stage: str) -> dict[str, Any]:
    """{} when the stage is up to date with dvc.lock, else DVC's description of what changed."""
    from dvc.repo import Repo

    with working_dir(root), Repo(str(root)) as repo:  # DVC resolves stage names against the cwd
        return repo.status(targets=[stage])


def dvc_commit(root: Path, stage: str) -> None:
    """Record the stage's deps, params and outs in dvc.lock (and its outs in the DVC cache)."""
    from dvc.repo import Repo

    with working_dir(root), Repo(str(root)) as repo:
        repo.commit(stage, force=True)


def dvc_checkout(root: Path, stage: str) -> bool:
    """Restore a stage's outputs from the DVC cache when dvc.lock is current but files are missing."""
    from dvc.repo import Repo

    try:
        with working_dir(root), Repo(str(root)) as repo:
            repo.checkout(targets=[stage])
        return not dvc_status(root, stage)
    except Exception:
        return False


def dvc_push(root: Path) -> int | None:
    """`dvc push` to the default remote; None when no default remote is configured."""
    from dvc.repo import Repo

    with working_dir(root), Repo(str(root)) as repo:
        if not repo.config.get("core", {}).get("remote"):
            return None
        return repo.push()
