"""End to end: the Prefect flow and `dvc repro` run the same stages and agree on what is up to date."""

from __future__ import annotations

import json
import re
import sys

import pandas as pd
import pytest
from conftest import UQA_HUB, dvc, hub_sample_params, needs_shared, run_ok

pytestmark = pytest.mark.slow

ALWAYS_RUNS = {"source": ["always changed"]}  # `dvc status` of an up-to-date project: source checks the data each run


def _flow(project, overrides=None):
    from flows.pipeline import uqa_pipeline

    state = uqa_pipeline(project_dir=str(project), overrides=overrides, return_state=True)
    assert state.is_completed(), state.message
    return state.result()


@needs_shared
def test_flow_and_dvc_agree_end_to_end(project_factory, prefect_server):
    project = project_factory(hub_sample_params())

    first = _flow(project)
    assert set(first["stages"].values()) == {"Completed"}
    assert first["metrics"]["n_questions"] > 100
    assert {"exact_match", "f1", "urdu_exact_match", "urdu_f1"} <= set(first["metrics"])
    assert json.loads(dvc("status", "--json", cwd=project).stdout) == ALWAYS_RUNS
    repro = dvc("repro", cwd=project).stdout
    assert re.findall(r"Running stage '(\w+)'", repro) == ["source"]  # the data is checked, nothing else runs
    assert "Stage 'download' didn't change, skipping" in repro and "Stage 'register' didn't change, skipping" in repro

    # the registry has a version in prod, and predict answers from it
    from uqa.model.predict import Predictor
    from uqa.registry.lookup import resolve_model
    from uqa.registry.store import Registry

    assert Registry(project, "uqa-qa").stage_version() == "v0.0.1"
    tags = run_ok(["git", "tag"], project).stdout.split()
    assert "uqa-qa@v0.0.1" in tags
    row = pd.read_parquet(next((UQA_HUB / "data").glob("validation-*.parquet"))).iloc[0]
    answer = Predictor(resolve_model("prod", project))([row.question], [row.context])[0]
    assert answer.answer and row.context[answer.start:answer.end] == answer.answer
    r = run_ok([sys.executable, "-m", "uqa_cli", "predict", "--model", "prod", "--question", row.question,
                "--context", row.context, "--json"], project)
    assert json.loads(r.stdout)["answer"] == answer.answer

    # nothing changed: source checks the data (unchanged), every other stage is skipped, shown as Cached
    fingerprint = (project / "data/source.json").read_bytes()
    again = _flow(project)
    assert again["stages"].pop("source") == "Completed"
    assert set(again["stages"].values()) == {"Cached"}
    assert (project / "data/source.json").read_bytes() == fingerprint  # the same data: the same fingerprint
    assert json.loads((project / "reports/source.json").read_text())["checked"] is True

    # a new stride as a flow parameter: a DVC experiment in its own workspace sharing the cache:
    # download and filter come from the cache, tokenize and what follows run, params.yaml stays
    params_before = (project / "params.yaml").read_bytes()
    third = _flow(project, {"tokenize": {"stride": 64}})
    assert third["stages"]["download"] == third["stages"]["filter"] == "Cached"
    assert third["stages"]["tokenize"] == third["stages"]["train"] == "Completed"
    assert third["stages"]["register"] == "Skipped (experiment)"
    assert (project / "params.yaml").read_bytes() == params_before
    assert json.loads(dvc("status", "--json", cwd=project).stdout) == ALWAYS_RUNS
    shown = json.loads(dvc("exp", "show", "--json", cwd=project).stdout)
    exps = {e["name"]: e for rev in shown for e in (rev.get("experiments") or []) for e in e["revs"]}
    exp = exps[third["experiment"]]["data"]
    assert exp["params"]["params.yaml"]["data"]["tokenize"]["stride"] == 64
    assert exp["metrics"]["metrics/eval.json"]["data"]["f1"] == pytest.approx(third["metrics"]["f1"])
    assert not any((project / ".dvc/tmp/uqa-exps").glob("*"))  # the experiment's workspace is gone

    # the other way round: dvc repro after a params change, then the flow finds nothing to do
    text = (project / "params.yaml").read_text().replace("stride: 128", "stride: 96")
    assert "stride: 96" in text
    (project / "params.yaml").write_text(text)
    repro = dvc("repro", cwd=project).stdout
    assert "Running stage 'tokenize'" in repro
    assert "Running stage 'download'" not in repro and "Running stage 'filter'" not in repro
    fourth = _flow(project)
    assert fourth["stages"].pop("source") == "Completed"
    assert set(fourth["stages"].values()) == {"Cached"}


def test_bad_data_fails_the_flow_with_a_clear_message_and_no_retry(project_factory, prefect_server, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "1", "title": "t", "context": "c", "question": "q"}) + "\n")
    project = project_factory({"data": {"source": {"train": str(bad), "validation": str(bad)}}})
    from flows.pipeline import uqa_pipeline

    state = uqa_pipeline(project_dir=str(project), return_state=True)
    assert state.is_failed()
    assert "bad.jsonl: missing column(s) is_impossible, answer, answer_start" in state.message
    assert not (project / "data" / "filtered").exists()
