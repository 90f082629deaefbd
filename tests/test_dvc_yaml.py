"""dvc.yaml and the stage modules describe the same deps, params and outs (one definition)."""

from __future__ import annotations

import importlib

import pytest
import yaml
from conftest import REPO

from uqa.stages import STAGES


def _paths(entries) -> list[str]:
    out = []
    for e in entries or []:
        out.append(next(iter(e)) if isinstance(e, dict) else e)
    return out


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_stage_declarations_match(stage):
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage.name]
    module = importlib.import_module(stage.module)
    assert spec["cmd"] == f"python -m {stage.module}"
    assert _paths(spec.get("deps")) == list(module.DEPS)
    assert _paths(spec.get("params")) == list(module.PARAMS)
    outs = _paths(spec.get("outs")) + _paths(spec.get("metrics"))
    assert set(module.OUTS) | set(module.METRICS) <= set(outs) | {"reports/train.log"}
    assert hasattr(module, "main") and hasattr(module, "run")


def test_stage_order_is_a_chain():
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(spec) == [s.name for s in STAGES] == ["source", "download", "filter", "tokenize", "train", "evaluate",
                                                     "register"]


def test_source_stage_always_runs_and_download_depends_on_it():
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert spec["source"]["always_changed"] is True
    fingerprint = spec["source"]["outs"][0]["data/source.json"]
    assert fingerprint == {"cache": False, "persist": True}  # kept as it is when the Hub is unreachable
    assert "data/source.json" in _paths(spec["download"]["deps"])


def test_registry_artifact_declared():
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert spec["artifacts"]["uqa-qa"] == {**spec["artifacts"]["uqa-qa"], "path": "registry/uqa-qa", "type": "model"}
