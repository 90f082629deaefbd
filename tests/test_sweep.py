"""uqa sweep: trials as DVC experiments, in-process without a server and as deployment runs on a
process work pool with two workers; the winner registered through the gate; params.yaml untouched."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, demo_tiny_params, make_project, run_ok, stop_process_group

from flows.sweep import RandomSearch, grid_trials, parse_range, pick_winner
from uqa.errors import UserError

# 10 optimizer steps per trial, two trials (two --grid options: every combination is 2 x 1; the
# combinations themselves are checked without training in test_grid_is_every_combination_in_order)
FAST = demo_tiny_params(max_steps=10)
GRID = ["--grid", "train.learning_rate=1e-3,2e-3", "--grid", "train.epochs=1"]


def test_grid_is_every_combination_in_order():
    assert grid_trials({"train.learning_rate": [1e-3, 2e-3], "train.epochs": [1, 2]}) == [
        {"train.learning_rate": 1e-3, "train.epochs": 1}, {"train.learning_rate": 1e-3, "train.epochs": 2},
        {"train.learning_rate": 2e-3, "train.epochs": 1}, {"train.learning_rate": 2e-3, "train.epochs": 2}]


def test_ranges_are_checked_and_random_search_is_seeded():
    assert parse_range("1e-4:1e-2:log") == (1e-4, 1e-2, "log")
    for bad in ("1", "2:1", "a:b", "1:2:cubic"):
        with pytest.raises(UserError, match="range"):
            parse_range(bad)
    draws = []
    for _ in range(2):
        search = RandomSearch({"train.learning_rate": "1e-4:1e-2:log", "train.epochs": "1:3:int"}, seed=7)
        draws.append([search.ask(i) for i in range(3)])
    assert draws[0] == draws[1]
    assert all(1e-4 <= d["train.learning_rate"] <= 1e-2 and d["train.epochs"] in (1, 2, 3) for d in draws[0])


def test_winner_is_the_best_f1_and_on_a_tie_the_shorter_run():
    trials = [{"number": 0, "state": "COMPLETED", "f1": 80.0, "duration_s": 50},
              {"number": 1, "state": "COMPLETED", "f1": 90.0, "duration_s": 70},
              {"number": 2, "state": "COMPLETED", "f1": 90.0, "duration_s": 40},
              {"number": 3, "state": "FAILED", "duration_s": 1}]
    assert pick_winner(trials)["number"] == 2
    assert pick_winner([trials[3]]) is None


def _experiments(project) -> dict:
    shown = json.loads(run_ok([sys.executable, "-m", "dvc", "exp", "show", "--json"], project).stdout)
    return {rev["name"]: rev["data"] for base in shown for exp in (base.get("experiments") or [])
            for rev in exp["revs"]}


def _assert_real_f1s(project, trials: list[dict], registered_f1: float | None = None) -> None:
    """Each trial's F1 is the one its own evaluation wrote into its DVC experiment (not a placeholder),
    a real score in (0, 100]; the winner is the best of them; the registered version carries its F1."""
    exps = _experiments(project)
    for t in trials:
        scored = exps[t["experiment"]]["metrics"]["metrics/eval.json"]["data"]
        assert t["f1"] == pytest.approx(scored["f1"], abs=0.005), (t, scored)
        assert 0 < scored["f1"] <= 100 and scored["n_questions"] > 0, scored
    best = max(t["f1"] for t in trials)
    if registered_f1 is not None:
        assert registered_f1 == pytest.approx(best, abs=0.005)


@pytest.mark.slow  # trainings, and `uqa sweep`'s own temporary Prefect server
def test_sweep_without_a_server_runs_the_trials_one_after_another(tmp_path):
    project = make_project(tmp_path / "project", FAST)
    params_before = (project / "params.yaml").read_bytes()
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-home"),
               PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
    env.pop("PREFECT_API_URL", None)  # a laptop: no server, `uqa` starts its own temporary one
    r = subprocess.run([sys.executable, "-m", "uqa_cli", "sweep", "--project", str(project), *GRID],
                       cwd=project, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "Traceback" not in r.stdout + r.stderr
    lines = [line for line in r.stdout.splitlines() if re.match(r"trial \d: COMPLETED", line)]
    assert len(lines) == 2, r.stdout[-3000:]
    names = [line.rsplit("experiment ", 1)[1] for line in lines]
    f1s = [float(re.search(r"F1\s+([\d.]+)", line).group(1)) for line in lines]
    exps = _experiments(project)
    trials = [{"experiment": n, "f1": f} for n, f in zip(names, f1s, strict=True)]
    from uqa.registry.store import Registry

    registered = Registry(project, "uqa-qa").record("v0.0.1")["metrics"]["f1"]
    _assert_real_f1s(project, trials, registered)  # each trial is a DVC experiment with its params and F1
    winner = re.search(r"winner: trial (\d) .*\(F1 ([\d.]+)\)", r.stdout)
    assert float(winner.group(2)) == pytest.approx(max(f1s), abs=0.005), r.stdout[-2000:]
    lrs = sorted(exps[n]["params"]["params.yaml"]["data"]["train"]["learning_rate"] for n in names)
    assert lrs == [1e-3, 2e-3]
    assert (project / "params.yaml").read_bytes() == params_before
    assert re.search(r"registered uqa-qa v0\.0\.1 \((promoted to prod|not promoted): ", r.stdout), r.stdout[-2000:]
    assert [v["version"] for v in Registry(project, "uqa-qa").versions()] == ["v0.0.1"]
    # the version's lineage names the sweep's run and the winning experiment it came from
    run = Registry(project, "uqa-qa").record("v0.0.1")["lineage"]["run"]
    winner = re.search(r"winner: trial (\d)", r.stdout).group(1)
    assert run["flow"] == "uqa-sweep" and run["experiment"]["name"] == names[int(winner)]
    assert not any((project / ".dvc/tmp/uqa-exps").glob("*"))  # every trial's worktree is gone

    # a winner evaluated otherwise (SQuAD2 mode: 300 questions, 70 without an answer) is gated against prod
    # re-scored on the winner's own validation set, not on the project's answerable-only one
    r = subprocess.run([sys.executable, "-m", "uqa_cli", "sweep", "--project", str(project),
                        "--grid", "data.keep_unanswerable=true"], cwd=project, env=env, capture_output=True,
                       text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    second = Registry(project, "uqa-qa").record("v0.0.2")
    assert (second["metrics"]["mode"], second["metrics"]["n_questions"]) == ("squad2", 300)
    said = re.search(r"prod v0\.0\.1 F1 ([\d.]+) re-scored on this run's evaluation", second["reason"])
    assert said, second["reason"]
    assert float(said.group(1)) == pytest.approx(_prod_f1_in_squad2_mode(project, tmp_path), abs=0.006)


def _prod_f1_in_squad2_mode(project: Path, tmp_path: Path) -> float:
    """prod's F1 on the SQuAD2-mode validation set, computed here from the data and the stage code."""
    from tasks.download import download
    from tasks.filter import filter_rows
    from uqa.params.files import load_params
    from uqa.params.overrides import deep_merge
    from uqa.params.validation import params_from_dict
    from uqa.registry.evalset import model_f1_on
    from uqa.registry.store import Registry
    from uqa.workspace.dvc_ops import working_dir

    params = load_params(project / "params.yaml")
    params = params_from_dict(deep_merge(params.to_dict(), {"data": {"keep_unanswerable": True}}))
    scratch = tmp_path / "squad2-set"
    scratch.mkdir()
    with working_dir(scratch):
        download(params.data)
        filter_rows(params.data)
    return model_f1_on(Registry(project, "uqa-qa").version_dir("v0.0.1"), scratch / "data/filtered/validation",
                       params, squad2=True)


def _pool_with_deployment(url: str, deployment: str) -> dict[str, str]:
    """The `uqa-local` process pool and one deployment of prefect.yaml on the server at `url`; returns
    the environment for workers and CLI calls against it."""
    from test_deploy import prefect_cli

    env = dict(os.environ, PREFECT_API_URL=url, PWD=str(REPO))
    prefect_cli("work-pool", "create", "uqa-local", "--type", "process", "--overwrite", env=env)
    prefect_cli("--no-prompt", "deploy", "-n", deployment, env=env)
    return env


@pytest.mark.slow
def test_sweep_on_a_work_pool_with_two_workers(prefect_server, tmp_path):
    """Trials as runs of the `trial` deployment that two process workers pick up; a retried parent
    gets the same child runs back (idempotency keys); the sweep artifact lists every trial."""
    from prefect.deployments import run_deployment
    from test_deploy import api

    from flows.sweep import uqa_sweep

    url = prefect_server
    project = make_project(tmp_path / "project", FAST)
    params_before = (project / "params.yaml").read_bytes()
    env = _pool_with_deployment(url, "trial")
    workers = [subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "uqa-local",
                                 "--limit", "1"], cwd=REPO, env=env, stdout=open(tmp_path / f"worker{i}.log", "w"),
                                stderr=subprocess.STDOUT, start_new_session=True) for i in range(2)]
    try:
        started = time.monotonic()
        # two trials on two workers (each with --limit 1): both run, one per worker
        state = uqa_sweep(project_dir=str(project), grid={"train.learning_rate": [1e-3, 2e-3]},
                          trial_deployment="uqa-pipeline/trial", return_state=True)
        assert state.is_completed(), state.message
        result = state.result()
        print(f"2 trials on 2 workers: {time.monotonic() - started:.0f} s")
    finally:
        for w in workers:
            stop_process_group(w, grace=30)
    trials = result["trials"]
    assert [t["state"] for t in trials] == ["COMPLETED"] * 2, trials
    _assert_real_f1s(project, trials, result["registration"]["f1"])
    assert (project / "params.yaml").read_bytes() == params_before
    assert result["registration"]["version"] == "v0.0.1"

    # a retried sweep asks for the same trials again: the same flow runs come back, none starts twice
    sweep_run = str(state.state_details.flow_run_id)
    for t in trials:
        again = run_deployment("uqa-pipeline/trial", parameters={"project_dir": str(project)},
                               idempotency_key=f"uqa-sweep-{sweep_run}-trial-{t['number']}", timeout=0)
        assert str(again.id) == t["flow_run_id"]
    runs = api(url, "/flow_runs/filter", {"deployments": {"name": {"any_": ["trial"]}}})
    assert sorted(r["id"] for r in runs) == sorted(t["flow_run_id"] for t in trials)

    artifacts = api(url, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [sweep_run]}}})
    sweep = next(a for a in artifacts if a["key"] == "uqa-sweep")["data"]
    assert all(f"`{t['experiment']}`" in sweep for t in trials) and "**(winner)**" in sweep


@pytest.mark.slow
def test_sweep_trials_on_other_machines(prefect_server, tmp_path):
    """The `trial-remote` deployment: each trial clones the project at the sweep's snapshot commit
    (from a bare git remote) into a directory of its own on its worker's "machine" (a directory the
    project is not in), pulls the data from the DVC remote (a local directory), runs as a DVC
    experiment and `dvc exp push`es it; the sweep `dvc exp pull`s them, registers the winner."""
    from flows.sweep import uqa_sweep

    url = prefect_server
    project = make_project(tmp_path / "project", FAST)
    params_before = (project / "params.yaml").read_bytes()
    env = _pool_with_deployment(url, "trial-remote")

    # no git remote to clone from: refused before any work, saying what to add
    state = uqa_sweep(project_dir=str(project), grid={"train.epochs": [1]},
                      trial_deployment="uqa-pipeline/trial-remote", return_state=True)
    assert state.is_failed() and "has no git remote 'origin'" in state.message
    assert not (project / "data").exists()

    origin = tmp_path / "origin.git"
    run_ok(["git", "init", "-q", "--bare", str(origin)], tmp_path)
    run_ok(["git", "remote", "add", "origin", str(origin)], project)
    run_ok([sys.executable, "-m", "dvc", "remote", "add", "-d", "store", str(tmp_path / "dvc-store")], project)
    run_ok(["git", "commit", "-q", "-am", "a default DVC remote"], project)
    run_ok(["git", "push", "-q", "origin", "HEAD:refs/heads/main"], project)
    head_before = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout

    machines = [tmp_path / f"machine-{c}" for c in "ab"]
    workers = []
    for m in machines:
        m.mkdir()
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", "uqa-local", "--limit", "1"], cwd=m,
            env=dict(env, PWD=str(m)), stdout=open(tmp_path / f"{m.name}.log", "w"), stderr=subprocess.STDOUT,
            start_new_session=True))
    try:
        state = uqa_sweep(project_dir=str(project), grid={"train.learning_rate": [1e-3, 2e-3]},
                          trial_deployment="uqa-pipeline/trial-remote", return_state=True)
    finally:
        for w in workers:
            stop_process_group(w, grace=30)
    logs = "".join((tmp_path / f"{m.name}.log").read_text() for m in machines)
    assert state.is_completed(), f"{state.message}\n{logs[-6000:]}"
    result = state.result()
    trials = result["trials"]
    assert [t["state"] for t in trials] == ["COMPLETED"] * 2, trials

    # every trial ran in a clone of its own on a worker's machine, and removed it after pushing
    # each trial trained on the data the sweep resolved: source pinned, the data stages cached
    assert logs.count("source: pinned by the sweep") == 2, logs[-6000:]
    assert logs.count("tokenize: up to date in dvc.lock, skipped") == 2
    clones = set(re.findall(r"removed this trial's clone (\S+)", logs))
    assert len(clones) == 2 and all(Path(c).name.startswith("uqa-trial-") for c in clones), logs[-6000:]
    assert not any(Path(c).exists() or Path(c).is_relative_to(project) for c in clones)
    assert not list((project / ".dvc/tmp").glob("uqa-exps/*-*-*"))  # no trial worktree in the project

    # the experiments came back through git (refs/exps on the remote) and DVC; the project lists them
    remote_exps = subprocess.run(["git", "ls-remote", str(origin), "refs/exps/*"], capture_output=True,
                                 text=True).stdout.splitlines()
    assert len(remote_exps) == 2, remote_exps
    assert not subprocess.run(["git", "ls-remote", str(origin), "refs/uqa-sweeps/*"], capture_output=True,
                              text=True).stdout.strip()  # the snapshot ref is gone after the sweep
    _assert_real_f1s(project, trials, result["registration"]["f1"])  # pulled back with their metrics
    assert (project / "params.yaml").read_bytes() == params_before
    assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout == head_before
    assert result["registration"]["version"] == "v0.0.1"
