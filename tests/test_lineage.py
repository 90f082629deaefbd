"""Lineage on every version: code commit (+ dirty flag and diff hash), data and model hashes, evaluation
set, the run; in registration.json, the index, the model card and the GTO tag; `uqa registry show/diff`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_ok
from test_register import _metrics, _model

from tasks.register import register
from uqa.params.validation import params_from_dict
from uqa.registry import lineage
from uqa_cli.main import main


@pytest.fixture
def git_project(tmp_path):
    run_ok(["git", "init", "-q"], tmp_path)
    (tmp_path / "code.py").write_text("x = 1\n")
    # as DVC's .gitignore entries for the stages' outputs do: what a run writes is not code
    (tmp_path / ".gitignore").write_text("/models\n/metrics\n/registry\n/reports\n/data\n")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  train:\n    outs:\n    - path: models/final\n"
                                       "      md5: abc123.dir\n")
    run_ok(["git", "add", "-A"], tmp_path)
    run_ok(["git", "commit", "-q", "-m", "init"], tmp_path)
    return tmp_path


def _head(root: Path) -> str:
    return run_ok(["git", "rev-parse", "HEAD"], root).stdout.strip()


def test_code_state_flags_uncommitted_changes_and_hashes_them(git_project):
    root = git_project
    clean = lineage.code_state(root)
    assert (clean["commit"], clean["dirty"], clean["diff_sha256"]) == (_head(root), False, None)
    (root / "dvc.lock").write_text("rewritten by the run\n")  # the run's doing, not a code change
    assert lineage.code_state(root)["dirty"] is False
    (root / "code.py").write_text("x = 2\n")
    first = lineage.code_state(root)
    assert first["dirty"] is True and first["changed_files"] == ["code.py"] and len(first["diff_sha256"]) == 64
    (root / "code.py").write_text("x = 3\n")
    assert lineage.code_state(root)["diff_sha256"] != first["diff_sha256"]
    (root / "code.py").write_text("x = 1\n")
    (root / "new_module.py").write_text("y = 1\n")  # an untracked file is a change too
    untracked = lineage.code_state(root)
    assert untracked["dirty"] and untracked["changed_files"] == ["new_module.py"]


def test_what_a_run_writes_is_not_a_code_change(git_project):
    root = git_project
    (root / "dvc.yaml").write_text("stages:\n  evaluate:\n    cmd: x\n    outs:\n    - reports/predictions.parquet\n"
                                   "    metrics:\n    - metrics/eval.json:\n        cache: false\n")
    run_ok(["git", "add", "dvc.yaml"], root)
    run_ok(["git", "commit", "-q", "-m", "stages"], root)
    (root / ".gitignore").write_text("/models\n/registry\n/data\n")  # DVC adds its outputs here
    for out in ("metrics/eval.json", "reports/predictions.parquet", "data/.gitignore"):
        (root / out).parent.mkdir(parents=True, exist_ok=True)
        (root / out).write_text("{}")  # a cache: false metric is not git-ignored, yet it is the run's
    assert lineage.code_state(root)["dirty"] is False
    with (root / "dvc.yaml").open("a") as f:  # the pipeline's definition is code
        f.write("# a changed stage\n")
    assert lineage.code_state(root)["changed_files"] == ["dvc.yaml"]


def test_code_state_outside_git(tmp_path):
    assert lineage.code_state(tmp_path)["commit"] is None


def test_data_lineage_names_the_evaluation_set_the_gate_compares(tmp_path):
    import pandas as pd

    from uqa.registry.gate import eval_set_fingerprint

    examples = pd.DataFrame({"id": ["a", "b"], "question": ["q1", "q2"], "context": ["c1", "c2"],
                             "answer": ["x", "y"], "answer_start": [0, 1]})
    recorded = eval_set_fingerprint(examples)  # what evaluate writes into metrics/eval.json
    data = lineage.data_lineage(tmp_path, recorded)
    assert (data["eval_set_sha256"], data["eval_set_rows"]) == (recorded["sha256"], 2)
    assert lineage.data_lineage(tmp_path)["eval_set_sha256"] is None  # metrics that do not say: unknown, not made up


def _registered_twice(root: Path):
    _model(root, 1)
    _metrics(root, 60.0)
    first = register(params_from_dict({"register": {"min_f1": 0.0}}), root)
    (root / "code.py").write_text("x = 2\n")  # uncommitted code change before the second run
    _model(root, 2)
    _metrics(root, 50.0)
    second = register(params_from_dict({"register": {"min_f1": 0.0}, "train": {"epochs": 2}}), root)
    return first, second


def test_every_version_records_its_lineage_everywhere(git_project):
    root = git_project
    head = _head(root)
    first, second = _registered_twice(root)
    record = json.loads((root / first["path"] / "registration.json").read_text())
    lin = record["lineage"]
    assert lin["code"]["commit"] == head and lin["code"]["dirty"] is False
    assert lin["data"]["dvc"] == {"models/final": "abc123.dir"}
    assert lin["params"]["register"]["min_f1"] == 0.0 and lin["metrics"]["f1"] == 60.0
    assert lin["run"] is None  # registered outside Prefect (as `dvc repro` does)
    assert lin["promotion"] == {"promoted": True, "reason": first["reason"], "prod_before": None, "prod_f1": None,
                                "f1_change": None}
    second_lin = json.loads((root / second["path"] / "registration.json").read_text())["lineage"]
    assert second_lin["code"]["dirty"] is True and second_lin["code"]["changed_files"] == ["code.py"]
    assert second_lin["promotion"]["prod_before"] == "v0.0.1" and second_lin["promotion"]["f1_change"] == -10.0
    assert (second["prod_f1"], second["f1_change"]) == (60.0, -10.0)
    # the index record is the same record; the card and the GTO tag carry it too
    index = json.loads((root / "registry" / "uqa-qa" / "index.json").read_text())
    assert index["versions"][1]["lineage"] == second_lin
    card = (root / second["model_card"]).read_text()
    assert "## Lineage" in card and head in card and second_lin["code"]["diff_sha256"] in card
    tag = run_ok(["git", "tag", "-l", "--format=%(contents)", "uqa-qa@v0.0.2"], root).stdout
    note = json.loads(tag.strip())
    assert note["commit"] == head and note["dirty"] is True and note["promoted"] is False


def test_registry_show_and_diff(git_project, capsys):
    root = git_project
    head = _head(root)
    _registered_twice(root)
    assert main(["registry", "show", "prod", "--json", "--project", str(root)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == "v0.0.1" and shown["stages"] == ["prod"]
    assert shown["lineage"]["code"]["commit"] == head
    assert main(["registry", "--project", str(root), "show", "uqa-qa@v0.0.2"]) == 0
    text = capsys.readouterr().out
    assert "uqa-qa@v0.0.2" in text and f"commit {head} + uncommitted changes" in text and "promoted: no (F1 50.00 < prod v0.0.1" in text
    assert main(["registry", "diff", "v0.0.1", "v0.0.2", "--project", str(root)]) == 0
    out = capsys.readouterr().out
    assert "code:" in out and "dirty: false -> true" in out
    assert "params:" in out and "train.epochs: 6.0 -> 2.0" in out
    assert "metrics:" in out and "f1: 60.0 -> 50.0" in out
    assert main(["registry", "show", "v9.9.9", "--project", str(root)]) == 2
    assert "not in" in capsys.readouterr().err


def test_registry_show_of_a_version_without_lineage(git_project, capsys):
    """Versions registered before lineage existed are shown as such, not as a crash."""
    root = git_project
    _model(root, 1)
    _metrics(root, 60.0)
    register(params_from_dict({}), root)
    index_path = root / "registry" / "uqa-qa" / "index.json"
    index = json.loads(index_path.read_text())
    del index["versions"][0]["lineage"]
    index_path.write_text(json.dumps(index))
    assert main(["registry", "show", "--project", str(root)]) == 0
    assert "lineage: not recorded" in capsys.readouterr().out


def test_cli_show_with_nothing_in_prod(git_project, capsys):
    assert main(["registry", "show", "prod", "--project", str(git_project)]) == 2  # nothing registered yet
    assert "no version of 'uqa-qa' is in stage 'prod'" in capsys.readouterr().err


# -- retention --------------------------------------------------------------------------------------

def test_keep_last_prunes_old_versions_but_never_prod_and_keeps_their_records(git_project, capsys):
    root = git_project
    params = params_from_dict({"register": {"min_f1": 0.0, "keep_last": 1}})
    for seed, f1 in ((1, 60.0), (2, 50.0), (3, 40.0)):  # v0.0.1 is prod; v0.0.2, v0.0.3 are not promoted
        _model(root, seed)
        _metrics(root, f1)
        ckpt = root / "models" / "checkpoints" / "checkpoint-10"
        ckpt.mkdir(parents=True)
        (ckpt / "model.safetensors").write_bytes(b"0" * 1000)
        report = register(params, root)
        assert not (root / "models" / "checkpoints").exists()  # the run finished: its checkpoints went
        assert report["checkpoint_bytes_removed"] == 1000
    assert report["pruned"] == ["v0.0.2"]
    store = root / "registry" / "uqa-qa"
    assert (store / "v0.0.1" / "config.json").exists()  # prod: kept whatever its age
    assert (store / "v0.0.3" / "config.json").exists()  # the newest
    assert not (store / "v0.0.2").exists()
    index = json.loads((store / "index.json").read_text())
    assert [bool(v.get("pruned")) for v in index["versions"]] == [False, True, False]
    assert main(["registry", "show", "v0.0.2", "--project", str(root)]) == 0  # its lineage is still there
    out = capsys.readouterr().out
    assert "files: pruned" in out and "code: commit" in out


def test_no_keep_last_keeps_every_version(git_project):
    root = git_project
    for seed in (1, 2, 3):
        _model(root, seed)
        _metrics(root, 60.0 - seed)
        assert register(params_from_dict({}), root)["pruned"] == []
    assert len(list((root / "registry" / "uqa-qa").glob("v*/config.json"))) == 3


def test_keep_last_removes_old_experiments_and_collects_the_dvc_cache(tmp_path):
    import time

    from conftest import dvc

    from uqa.registry.retention import experiments_newest_first, prune_experiments_and_cache

    root = tmp_path
    run_ok(["git", "init", "-q"], root)
    run_ok(["git", "config", "user.email", "t@localhost"], root)
    run_ok(["git", "config", "user.name", "t"], root)
    dvc("init", "-q", cwd=root)
    (root / "data.txt").write_text("week 0\n")
    dvc("add", "-q", "data.txt", cwd=root)
    run_ok(["git", "add", "-A"], root)
    run_ok(["git", "commit", "-q", "-m", "init"], root)
    for week in (1, 2, 3):
        (root / "data.txt").write_text(f"week {week}\n")
        dvc("add", "-q", "data.txt", cwd=root)
        dvc("exp", "save", "-q", "-f", "-n", f"week-{week}", cwd=root)
        time.sleep(1.1)  # commit times order the experiments (one-second resolution)
    assert experiments_newest_first(root) == ["week-3", "week-2", "week-1"]
    objects = lambda: sorted(p.name for p in (root / ".dvc" / "cache").rglob("*") if p.is_file())  # noqa: E731
    assert len(objects()) == 4
    done = prune_experiments_and_cache(root, keep_last=1)
    assert done["experiments_removed"] == ["week-2", "week-1"]
    assert experiments_newest_first(root) == ["week-3"]
    assert len(objects()) == 1  # week 3 (the workspace and the kept experiment); the rest collected
    assert done["cache_bytes_after"] < done["cache_bytes_before"]
    assert prune_experiments_and_cache(root, keep_last=None) == {}
