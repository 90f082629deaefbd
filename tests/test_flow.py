"""End to end: the Prefect flow and `dvc repro` run the same stages and agree on what is up to date."""

from __future__ import annotations

import json
import sys

import pandas as pd
import pytest
from conftest import UQA_HUB, dvc, hub_sample_params, needs_shared, run_ok

pytestmark = pytest.mark.slow


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
    assert json.loads(dvc("status", "--json", cwd=project).stdout) == {}
    repro = dvc("repro", cwd=project).stdout
    assert "Running stage" not in repro and "up to date" in repro

    # the registry has a version in prod, and predict answers from it
    from uqa.predict import Predictor
    from uqa.registry import Registry, resolve_model

    assert Registry(project, "uqa-qa").stage_version() == "v0.0.1"
    tags = run_ok(["git", "tag"], project).stdout.split()
    assert "uqa-qa@v0.0.1" in tags
    row = pd.read_parquet(next((UQA_HUB / "data").glob("validation-*.parquet"))).iloc[0]
    answer = Predictor(resolve_model("prod", project))([row.question], [row.context])[0]
    assert answer.answer and row.context[answer.start:answer.end] == answer.answer
    r = run_ok([sys.executable, "-m", "uqa.cli", "predict", "--model", "prod", "--question", row.question,
                "--context", row.context, "--json"], project)
    assert json.loads(r.stdout)["answer"] == answer.answer

    # nothing changed: every stage is skipped, shown as Cached
    again = _flow(project)
    assert set(again["stages"].values()) == {"Cached"}

    # a new stride (a flow parameter): download and filter stay, tokenize and what follows rerun
    third = _flow(project, {"tokenize": {"stride": 64}})
    assert third["stages"]["download"] == third["stages"]["filter"] == "Cached"
    assert third["stages"]["tokenize"] == "Completed"
    assert "stride: 64" in (project / "params.yaml").read_text()
    assert json.loads(dvc("status", "--json", cwd=project).stdout) == {}

    # the other way round: dvc repro after a params change, then the flow finds nothing to do
    text = (project / "params.yaml").read_text().replace("stride: 64", "stride: 96")
    (project / "params.yaml").write_text(text)
    repro = dvc("repro", cwd=project).stdout
    assert "Running stage 'tokenize'" in repro
    assert "Running stage 'download'" not in repro and "Running stage 'filter'" not in repro
    fourth = _flow(project)
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
