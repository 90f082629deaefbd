"""`uqa demo`: the whole flow on the shipped demo data, in its own workspace (default demo-run/).

The workspace is a small project of its own (git + DVC, the project's dvc.yaml, params.yaml with
demo/params.yaml laid over it, the demo data), so the demo never rewrites your params.yaml and a
second `uqa demo` shows every stage as cached."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from uqa.errors import UserError
from uqa.params.files import read_raw

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # uqa/workspace/demo.py -> the checkout
DEMO_DIR = PROJECT_ROOT / "demo"
DEFAULT_WORKDIR = Path("demo-run")


def _run(cmd: list[str], cwd: Path) -> None:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise UserError(f"{' '.join(cmd)} failed in {cwd}: {r.stderr.strip() or r.stdout.strip()}")


def write_demo_params(dest: Path) -> None:
    """The project's params.yaml with demo/params.yaml laid over it (validated, comments kept)."""
    from uqa.params.files import apply_overrides

    shutil.copy2(PROJECT_ROOT / "params.yaml", dest)
    apply_overrides(dest, read_raw(DEMO_DIR / "params.yaml"))


def copy_dvc_settings(workdir: Path) -> None:
    """The project's DVC config (no analytics, hardlink cache, offline plots template) for a new project."""
    shutil.copy2(PROJECT_ROOT / ".dvc" / "config", workdir / ".dvc" / "config")
    if (PROJECT_ROOT / ".dvc" / "plots").exists():
        shutil.copytree(PROJECT_ROOT / ".dvc" / "plots", workdir / ".dvc" / "plots", dirs_exist_ok=True)


def prepare_workspace(workdir: Path) -> Path:
    """Create (once) a git + DVC project for the demo; returns its absolute path."""
    for needed in (PROJECT_ROOT / "dvc.yaml", PROJECT_ROOT / "params.yaml", DEMO_DIR / "data" / "train.jsonl"):
        if not needed.exists():
            raise UserError(f"{needed} not found: `uqa demo` needs the project checkout (pip install -e .)")
    workdir = workdir.resolve()
    if (workdir / "dvc.yaml").exists():
        # the stages are the project's: a workspace made by an older checkout gets the current ones
        if (workdir / "dvc.yaml").read_bytes() != (PROJECT_ROOT / "dvc.yaml").read_bytes():
            shutil.copy2(PROJECT_ROOT / "dvc.yaml", workdir / "dvc.yaml")
        return workdir
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(PROJECT_ROOT / "dvc.yaml", workdir / "dvc.yaml")
    shutil.copytree(DEMO_DIR / "data", workdir / "demo-data", dirs_exist_ok=True)
    write_demo_params(workdir / "params.yaml")
    (workdir / ".gitignore").write_text("/models/checkpoints/\n")  # DVC ignores its own outputs
    _run(["git", "init", "-q"], workdir)
    _run(["git", "config", "user.name", "uqa demo"], workdir)
    _run(["git", "config", "user.email", "uqa-demo@localhost"], workdir)
    _run([sys.executable, "-m", "dvc", "init", "-q"], workdir)
    copy_dvc_settings(workdir)
    _run(["git", "add", "-A"], workdir)
    _run(["git", "commit", "-q", "-m", "uqa demo workspace"], workdir)
    return workdir


def demo_workspace(workdir: Path = DEFAULT_WORKDIR, overrides: list[str] | None = None) -> Path:
    """The demo workspace, ready to run (`uqa demo` then runs the flow in it)."""
    from uqa.params.files import apply_overrides

    workspace = prepare_workspace(workdir)
    # the demo workspace is the demo's own project: its -S settings are its params (a run of the
    # flow with overrides would be an experiment instead, leaving params.yaml as it is)
    apply_overrides(workspace / "params.yaml", _as_mapping(overrides))
    return workspace


def _as_mapping(overrides: list[str] | None) -> dict[str, Any] | None:
    from uqa.params.overrides import overrides_to_nested

    return overrides_to_nested(overrides) or None
