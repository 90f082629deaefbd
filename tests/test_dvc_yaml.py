"""dvc.yaml (the stage graph: deps, params, outs) and the code (uqa/layout.py: the paths; tasks/chain.py:
the order; uqa/params/schema.py: the params) name the same things, checked in both directions."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO

from tasks.chain import STAGES, stage_name

NO_REPORT = {"evaluate"}  # its report is metrics/eval.json


def _paths(entries) -> list[str]:
    out = []
    for e in entries or []:
        out.append(next(iter(e)) if isinstance(e, dict) else e)
    return out


def _layout_paths() -> set[str]:
    from uqa import layout

    paths = {str(v) for v in vars(layout).values() if isinstance(v, Path)}
    paths |= {str(layout.report(stage_name(m))) for m in STAGES if stage_name(m) not in NO_REPORT}
    paths |= {str(d) for base in (layout.RAW_DIR, layout.FILTERED_DIR, layout.TOKENIZED_DIR)
              for d in layout.split_dirs(base)}
    return paths


@pytest.mark.parametrize("stage", STAGES, ids=stage_name)
def test_stage_declarations_match(stage):
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage_name(stage)]
    assert spec["cmd"] == f"python -m {stage.__name__}"
    assert hasattr(stage, "main") and hasattr(stage, "run")
    # every file dvc.yaml names for the stage is one the code names in uqa/layout.py
    declared = _paths(spec.get("deps")) + _paths(spec.get("outs")) + _paths(spec.get("metrics"))
    assert set(declared) <= _layout_paths(), set(declared) - _layout_paths()
    # every param key it depends on exists in the params schema
    from uqa.params.schema import Params

    defaults = Params().to_dict()
    for key in spec.get("params") or []:
        node = defaults
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{stage_name(stage)}: params key {key} is not in the schema"
            node = node[part]


def test_every_layout_path_is_in_dvc_yaml():
    """The other direction: each path the code names is some stage's dep or out (or train's scratch)."""
    from uqa import layout

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    declared = {p for spec in stages.values() for key in ("deps", "outs", "metrics") for p in _paths(spec.get(key))}
    outs = {p for spec in stages.values() for key in ("outs", "metrics") for p in _paths(spec.get(key))}
    missing = _layout_paths() - declared - {str(layout.CHECKPOINT_DIR), "data/raw", "data/filtered", "data/tokenized"}
    assert not missing, missing
    assert str(layout.CHECKPOINT_DIR) not in declared  # resumable scratch, deliberately not versioned
    for stage in STAGES:  # every stage writes its report, and it is declared
        assert str(layout.report(stage_name(stage))) in outs or stage_name(stage) in NO_REPORT


def test_stage_order_is_a_chain():
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(spec) == [stage_name(s) for s in STAGES] == ["source", "download", "filter", "tokenize", "train",
                                                            "evaluate", "register"]
    for previous, stage in zip(list(spec), list(spec)[1:], strict=False):  # each stage needs the one before it
        before = {p for key in ("outs", "metrics") for p in _paths(spec[previous].get(key))}
        assert before & set(_paths(spec[stage].get("deps"))), (previous, stage)


def test_source_stage_always_runs_and_download_depends_on_it():
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert spec["source"]["always_changed"] is True
    fingerprint = spec["source"]["outs"][0]["data/source.json"]
    assert fingerprint == {"cache": False, "persist": True}  # kept as it is when the Hub is unreachable
    assert "data/source.json" in _paths(spec["download"]["deps"])


def test_registry_artifact_declared():
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert spec["artifacts"]["uqa-qa"] == {**spec["artifacts"]["uqa-qa"], "path": "registry/uqa-qa", "type": "model"}


def test_train_declares_what_each_epoch_is_scored_with():
    """Each epoch's EM/F1 (which picks the kept checkpoint) reads the validation questions and the
    evaluate settings: a change to either must rerun train, so both are train's deps."""
    import tasks.train_recipe as recipe

    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]
    deps, params = set(_paths(spec["deps"])), set(spec["params"])
    assert {str(recipe.VALIDATION_FEATURES), str(recipe.VALIDATION_EXAMPLES)} <= deps
    assert {"evaluate", "data.keep_unanswerable", "train", "model"} <= params
    plotted = {f for plot in yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
               for p in plot.values() for f in p["y"]}
    assert {"dvclive/plots/metrics/eval/f1.tsv", "dvclive/plots/metrics/eval/exact.tsv"} <= plotted


def test_a_run_names_every_param_dvc_would_find_missing_after_a_stage(tmp_path):
    """demo/params.yaml is an overlay, not a params.yaml: used as one, DVC would fail each stage only
    when recording it. The run asks first and names every missing key with its default."""
    import shutil
    import subprocess
    import sys

    from uqa.errors import UserError
    from uqa.params.files import load_params
    from uqa.workspace.dvc_ops import missing_stage_params, require_stage_params

    subprocess.run([sys.executable, "-m", "dvc", "init", "-q", "--no-scm"], cwd=tmp_path, check=True)
    shutil.copy2(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    assert missing_stage_params(tmp_path) == []
    require_stage_params(tmp_path, load_params(tmp_path / "params.yaml"))

    shutil.copy2(REPO / "demo" / "params.yaml", tmp_path / "params.yaml")
    missing = missing_stage_params(tmp_path)
    assert missing == ["data.revision", "data.keep_unanswerable", "model.name", "evaluate", "train.precision"]
    with pytest.raises(UserError) as info:
        require_stage_params(tmp_path, load_params(tmp_path / "params.yaml"))
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'params.yaml'} does not set data.revision, data.keep_unanswerable, ")
    assert 'data.revision: null; data.keep_unanswerable: false; model.name: "xlm-roberta-base"; ' \
           'evaluate: (a section); train.precision: "auto"' in message
