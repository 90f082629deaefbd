"""DVC as users run it: experiments with -S, a local remote, a fresh clone that pulls and is clean."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from conftest import demo_tiny_params, make_project, run_ok

pytestmark = pytest.mark.slow

PARAMS = demo_tiny_params(max_steps=8, logging_steps=4)


def _dvc(*args: str, cwd: Path) -> str:
    # stage commands run `python -m tasks...`: the test's interpreter must be the `python` on PATH
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return run_ok([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, timeout=900).stdout


def test_experiments_remote_and_clone(tmp_path):
    project = make_project(tmp_path / "project", PARAMS)
    _dvc("exp", "run", "-S", "train.learning_rate=0.003", "-n", "lr-3e-3", cwd=project)
    _dvc("exp", "run", "-S", "train.learning_rate=0.001", "-n", "lr-1e-3", cwd=project)
    shown = json.loads(_dvc("exp", "show", "--json", cwd=project))
    experiments = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs", []):
                data = rev.get("data") or {}
                experiments[rev.get("name") or data.get("name")] = data
    assert {"lr-3e-3", "lr-1e-3"} <= set(experiments)
    for name, lr in (("lr-3e-3", 0.003), ("lr-1e-3", 0.001)):
        data = experiments[name]
        assert data["params"]["params.yaml"]["data"]["train"]["learning_rate"] == lr
        metrics = data["metrics"]["metrics/eval.json"]["data"]
        assert {"exact_match", "f1", "urdu_f1"} <= set(metrics)
    table = _dvc("exp", "show", "--md", cwd=project)
    assert "lr-3e-3" in table and "f1" in table

    # the workspace holds the last experiment: commit it, push data and models to a local remote
    remote = tmp_path / "remote"
    _dvc("remote", "add", "-d", "local", str(remote), cwd=project)
    run_ok(["git", "add", "-A"], project)
    run_ok(["git", "commit", "-q", "-m", "results"], project)
    from uqa.workspace.dvc_ops import dvc_push

    assert dvc_push(project) > 0  # what `uqa run --push` does at the end of a flow run
    assert "Everything is up to date" in _dvc("push", cwd=project)
    clone = tmp_path / "clone"
    run_ok(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    _dvc("pull", cwd=clone)
    assert (clone / "data" / "tokenized" / "train" / "dataset_info.json").exists()
    assert (clone / "models" / "final" / "model.safetensors").exists()
    assert any((clone / "registry" / "uqa-qa").glob("v0.0.*/README.md"))
    # everything pulled is current; only `source` (re-checks the data on every run) reports itself
    assert json.loads(_dvc("status", "--json", cwd=clone)) == {"source": ["always changed"]}
    # and the pulled, registered model answers
    from uqa.registry.lookup import resolve_model

    version_dir = resolve_model(f"uqa-qa@{json.loads((clone / 'reports' / 'register.json').read_text())['version']}",
                                clone)
    assert (version_dir / "config.json").exists()
