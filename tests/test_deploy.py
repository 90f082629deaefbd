"""Operating it for real: prefect.yaml deployed to a process work pool on a real server, a worker runs it;
what the UI shows is read back through the REST API and from the rendered UI page itself."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from conftest import REPO, demo_tiny_params, make_project, stop_process_group

pytestmark = pytest.mark.slow

SECRET = "hf_uqaTestSecretDoNotLog1234567890"
STAGES = {"download", "filter", "tokenize", "train", "evaluate", "register"}
DEMO_TINY = demo_tiny_params(max_steps=10)


def api(url: str, path: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{url}{path}", data=data, method="POST" if body is not None else "GET",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def prefect_cli(*args: str, env: dict, cwd: Path = REPO, timeout: float = 180) -> str:
    r = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"prefect {' '.join(args)}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


@pytest.fixture(scope="module")
def hub():
    """The local stand-in for the Hub's API (tests/test_registry_failclosed.py): it accepts only SECRET."""
    from test_registry_failclosed import HubStandIn

    with HubStandIn(SECRET) as stand_in:
        yield stand_in


@pytest.fixture(scope="module")
def deployed_run(prefect_server, hub, tmp_path_factory):
    """Deploy `weekly` from prefect.yaml, start a process worker, run the deployment, wait for it. The
    run pushes the promoted model to the Hub (the local stand-in) with HF_TOKEN from the worker's
    environment, so the token is really read and sent during the run whose logs are checked."""
    url = prefect_server
    project = make_project(tmp_path_factory.mktemp("deployed") / "project", {
        **DEMO_TINY, "register": {"push_to_hub": True, "hub_repo_id": "me/uqa"}})
    env = dict(os.environ, PREFECT_API_URL=url, PWD=str(REPO))
    prefect_cli("work-pool", "create", "uqa-local", "--type", "process", "--overwrite", env=env)
    out = prefect_cli("--no-prompt", "deploy", "-n", "weekly", env=env)
    assert "uqa-pipeline/weekly" in out
    worker_log = open(tmp_path_factory.mktemp("worker") / "worker.log", "w")
    worker_env = dict(env, HF_TOKEN=SECRET, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0",
                      NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    worker = subprocess.Popen(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", "uqa-local", "--limit", "1"],
        cwd=REPO, env=worker_env, stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        out = prefect_cli("deployment", "run", "uqa-pipeline/weekly", "--param", f"project_dir={project}", env=env)
        flow_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", out).group(1)
        deadline = time.time() + 600
        while True:
            run = api(url, f"/flow_runs/{flow_run_id}")
            if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            assert time.time() < deadline, f"flow run still {run['state_type']}"
            time.sleep(2)
    finally:
        stop_process_group(worker, grace=30)
        worker_log.close()
    assert run["state_type"] == "COMPLETED", Path(worker_log.name).read_text()[-5000:]
    return url, flow_run_id, project


def test_deployment_has_the_weekly_schedule(deployed_run):
    url, _, _ = deployed_run
    deployment = api(url, "/deployments/name/uqa-pipeline/weekly")
    schedule = deployment["schedules"][0]["schedule"]
    assert (schedule["cron"], schedule["timezone"]) == ("0 2 * * 1", "Asia/Karachi")
    assert deployment["work_pool_name"] == "uqa-local"
    assert deployment["parameters"]["project_dir"] == "."
    # one run at a time; a second one waits for a slot instead of racing the first
    limit = deployment.get("concurrency_limit") or (deployment.get("global_concurrency_limit") or {}).get("limit")
    assert limit == 1, {k: v for k, v in deployment.items() if "concurrency" in k}
    assert deployment["concurrency_options"]["collision_strategy"] == "ENQUEUE"


def test_run_shows_stages_artifacts_and_library_logs(deployed_run, hub):
    hub_seen = hub
    url, flow_run_id, project = deployed_run
    tasks = api(url, "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
    names = {t["name"].rsplit("-", 1)[0] for t in tasks}
    assert STAGES <= names
    assert all(t["state_type"] == "COMPLETED" for t in tasks)
    artifacts = api(url, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
    by_key = {a["key"]: a for a in artifacts}
    assert {"uqa-metrics", "uqa-filter-report", "uqa-registration", "uqa-errors", "uqa-train-epochs"} <= set(by_key)
    # EM/F1 of every epoch, scored as evaluate scores: in the progress artifact and a table with the kept one
    assert "validation F1" in by_key["uqa-train-progress"]["description"], by_key["uqa-train-progress"]
    epochs = by_key["uqa-train-epochs"]["data"]
    assert "| epoch | step | exact | F1 | loss | kept |" in epochs and "✓" in epochs and "best by **f1**" in epochs
    metrics = by_key["uqa-metrics"]["data"]
    assert "| exact match |" in metrics and "Urdu-normalized" in metrics
    assert "unanswerable: 490" in by_key["uqa-filter-report"]["data"]
    registration = by_key["uqa-registration"]["data"]
    assert "[uqa-qa@v0.0.1](file://" in registration and "promoted to prod: **yes**" in registration
    assert str(project / "registry" / "uqa-qa" / "v0.0.1" / "README.md") in registration
    logs = api(url, "/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200})
    messages = [entry["message"] for entry in logs]
    offset = 200
    while len(logs) == 200:
        logs = api(url, "/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200,
                                         "offset": offset})
        messages += [entry["message"] for entry in logs]
        offset += 200
    text = "\n".join(messages)
    assert "tasks.download: download: 2401 train rows" in text  # our stage loggers
    assert "train | " in text  # the training process's output
    assert "tasks.evaluate: evaluate:" in text
    # the token in the worker's environment was read and sent: the stand-in accepts no other, and it
    # took the promoted version's files in one commit
    hub = hub_seen
    assert hub.commits and "model.safetensors" in hub.commits[-1], hub.requests
    assert [auth for m, p, auth in hub.requests if m == "POST"] and all(
        auth == f"Bearer {SECRET}" for m, p, auth in hub.requests if m == "POST")
    from uqa.registry.store import Registry

    pushed = Registry(project, "uqa-qa").record("v0.0.1")["hub"]
    assert pushed["pushed"] is True and pushed["url"].startswith(f"{hub.url}/me/uqa/commit/"), pushed
    # ... and never reached the logs or the artifacts of the run
    assert SECRET not in text
    assert all(SECRET not in str(a.get("data") or "") for a in artifacts)  # progress artifacts hold a number
    written = [p for p in project.rglob("*") if p.is_file() and ".git" not in p.parts and ".dvc" not in p.parts]
    assert not [p for p in written if SECRET.encode() in p.read_bytes()]


def test_flow_run_page_renders_in_a_browser(browser, deployed_run):
    """The Prefect UI's flow-run page in the system's chromium, driven by Playwright: the run completed,
    every stage's task run is listed, the graph the page draws (a canvas: not in the DOM) is the chain of
    stages (read from the `/graph-v2` response the page itself fetched), and the artifacts render."""
    from playwright.sync_api import expect

    url, flow_run_id, _ = deployed_run
    ui = url.removesuffix("/api")
    out_dir = REPO / "reports" / "ui"
    out_dir.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = context.new_page()
        with page.expect_response(lambda r: "/graph-v2" in r.url and r.ok, timeout=90_000) as graph_response:
            page.goto(f"{ui}/runs/flow-run/{flow_run_id}")
        graph = graph_response.value.json()
        expect(page.get_by_text("uqa-pipeline").first).to_be_attached(timeout=60_000)
        expect(page.get_by_text("Completed").first).to_be_attached(timeout=60_000)
        for stage in STAGES:  # task runs are named <stage>-<suffix> in the page
            expect(page.get_by_text(re.compile(rf"^\s*{stage}-[0-9a-f]{{3}}\s*$")).first).to_be_attached()
        page.screenshot(path=str(out_dir / "flow-run.png"))
        assert (out_dir / "flow-run.png").stat().st_size > 10_000

        label_of = {n["id"]: n["label"] for _, n in graph["nodes"]}
        stage_of = {node_id: label.rsplit("-", 1)[0] for node_id, label in label_of.items()}
        # (an edge can be listed twice: Prefect records wait_for both as an input and as an upstream run)
        parents = {stage_of[n["id"]]: sorted({stage_of[e["id"]] for e in n["parents"]}) for _, n in graph["nodes"]}
        chain = ["source", "download", "filter", "tokenize", "train", "evaluate", "register"]
        assert parents == {stage: ([chain[i - 1]] if i else []) for i, stage in enumerate(chain)}, parents

        artifacts = api(url, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
        for key, texts in (("uqa-metrics", ("Evaluation metrics", "Urdu-normalized")),
                           ("uqa-train-epochs", ("Validation at every epoch", "kept"))):
            artifact_id = next(a["id"] for a in artifacts if a["key"] == key)
            page.goto(f"{ui}/artifacts/artifact/{artifact_id}")
            for text in texts:
                expect(page.get_by_text(text).first).to_be_visible(timeout=60_000)
            page.screenshot(path=str(out_dir / f"{key}-artifact.png"))
    finally:
        context.close()


def test_cancelling_a_deployment_run_stops_training(prefect_server, tmp_path):
    """`prefect flow-run cancel` (the UI's Cancel) on a run a process worker is training: the flow-run
    process gets SIGTERM from the worker, and the launcher and the rank go with it."""
    from test_faults import GONE_WITHIN_S, marked, training, wait_until

    url = prefect_server
    mark = uuid.uuid4().hex
    project = make_project(tmp_path / "project", demo_tiny_params(epochs=40))
    env = dict(os.environ, PREFECT_API_URL=url, PWD=str(REPO), UQA_TEST_MARK=mark,
               PREFECT_WORKER_QUERY_SECONDS="2")  # the worker notices the cancellation sooner
    prefect_cli("work-pool", "create", "uqa-local", "--type", "process", "--overwrite", env=env)
    prefect_cli("--no-prompt", "deploy", "-n", "weekly", env=env)
    worker_log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", "uqa-local", "--limit", "1"],
        cwd=REPO, env=env, stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        out = prefect_cli("deployment", "run", "uqa-pipeline/weekly", "--param", f"project_dir={project}", env=env)
        flow_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", out).group(1)
        assert wait_until(lambda: training(mark), 420), Path(worker_log.name).read_text()[-5000:]
        prefect_cli("flow-run", "cancel", flow_run_id, env=env)

        def stage_processes() -> list[str]:
            return [p for p in marked(mark) if "train_recipe" in p or "accelerate" in p]

        # generous deadlines for a loaded machine: each wait ends as soon as the processes are gone
        assert wait_until(lambda: not stage_processes(), GONE_WITHIN_S), stage_processes()
        assert wait_until(lambda: api(url, f"/flow_runs/{flow_run_id}")["state_type"] == "CANCELLED",
                          GONE_WITHIN_S), api(url, f"/flow_runs/{flow_run_id}")["state_type"]
    finally:
        stop_process_group(worker, grace=30)
        worker_log.close()


IMAGE = "ghcr.io/example/uqa-pipeline:cuda12"


def test_every_deployment_deploys_and_the_gpu_jobs_render(prefect_server):
    """`prefect deploy --all` against a real server once the pools exist; the docker and kubernetes
    jobs, rendered from the pools' base job templates exactly as their workers render them, carry the
    image, the GPU request and the environment, and their pull steps clone the branch (as weekly-remote)."""
    import asyncio

    import yaml
    from prefect_docker.worker import DockerWorkerJobConfiguration
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    url = prefect_server
    env = dict(os.environ, PREFECT_API_URL=url, PWD=str(REPO), UQA_IMAGE=IMAGE,
               UQA_GIT_REPOSITORY="https://git.example.invalid/uqa-pipeline.git", UQA_GIT_BRANCH="main")
    prefect_cli("work-pool", "create", "uqa-local", "--type", "process", "--overwrite", env=env)
    prefect_cli("work-pool", "create", "uqa-remote", "--type", "process", "--overwrite", env=env)
    prefect_cli("work-pool", "create", "uqa-gpu-docker", "--type", "docker", "--overwrite", env=env)
    prefect_cli("work-pool", "create", "uqa-gpu-k8s", "--type", "kubernetes", "--overwrite", "--base-job-template",
                str(REPO / "deploy" / "k8s-gpu-job-template.json"), env=env)
    prefect_cli("--no-prompt", "deploy", "--all", env=env)

    names = [d["name"] for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]]
    assert {"weekly", "trial", "trial-remote", "weekly-remote", "weekly-gpu-docker", "weekly-gpu-k8s"} <= set(names)
    deployed = {n: api(url, f"/deployments/name/uqa-pipeline/{n}") for n in names}
    for name, d in deployed.items():
        # trial-remote imports the installed pipeline (its clone is the project's, which need not hold the code)
        assert d["entrypoint"] == ("flows.pipeline.uqa_pipeline" if name == "trial-remote"
                                   else "flows/pipeline.py:uqa_pipeline"), name
        # the typed overrides: every params section in the run form
        overrides = d["parameter_openapi_schema"]["definitions"]["ParamsOverrides"]["properties"]
        assert set(overrides) == {"data", "model", "tokenize", "train", "evaluate", "register"}
    train_fields = deployed["weekly"]["parameter_openapi_schema"]["definitions"]["TrainParamsOverrides"]["properties"]
    assert {"type": "number", "exclusiveMinimum": 0} in train_fields["learning_rate"]["anyOf"]

    def render(config_cls, pool: str, deployment: dict):
        template = api(url, f"/work_pools/{pool}")["base_job_template"]
        return asyncio.run(config_cls.from_template_and_values(template, deployment["job_variables"]))

    for name in ("weekly-remote", "weekly-gpu-docker", "weekly-gpu-k8s"):
        # the same steps everywhere: a clone of the branch in a directory of the run's own (its id is
        # filled in when the run starts); the flow takes the rest from the remotes (push: true)
        steps = deployed[name]["pull_steps"]
        assert steps == deployed["weekly-remote"]["pull_steps"] and len(steps) == 1
        clone = steps[0]["prefect.deployments.steps.git_clone"]
        assert clone["repository"] == env["UQA_GIT_REPOSITORY"] and clone["branch"] == "main"
        assert clone["clone_directory_name"] == "uqa-run-{{ $PREFECT__FLOW_RUN_ID }}"
        assert deployed[name]["parameters"] == {"project_dir": ".", "push": True}  # the clone, published

    # a trial's clone is chosen per run (the sweep's commit, a directory of its own): the templates stay
    # unresolved in the deployment and are filled from the trial run's environment when it starts
    clone = deployed["trial-remote"]["pull_steps"][0]["prefect.deployments.steps.git_clone"]
    assert clone == {"id": "clone", "repository": "{{ $UQA_TRIAL_REPOSITORY }}",
                     "commit_sha": "{{ $UQA_TRIAL_COMMIT }}", "clone_directory_name": "{{ $UQA_TRIAL_CLONE_DIR }}"}
    assert deployed["trial-remote"]["parameters"] == {"project_dir": ".", "push": True}

    docker = render(DockerWorkerJobConfiguration, "uqa-gpu-docker", deployed["weekly-gpu-docker"])
    assert docker.image == IMAGE
    assert docker.container_create_kwargs["device_requests"] == [
        {"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}]
    from uqa.ops.runtime import TELEMETRY_OFF  # prefect.yaml spells the one list out: checked against it

    assert {k: docker.env.get(k) for k in TELEMETRY_OFF} == TELEMETRY_OFF

    k8s = render(KubernetesWorkerJobConfiguration, "uqa-gpu-k8s", deployed["weekly-gpu-k8s"])
    container = k8s.job_manifest["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == IMAGE
    assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert str(container["resources"]["requests"]["nvidia.com/gpu"]) == "1"
    assert container["resources"]["limits"]["memory"] == "48Gi"
    env = container["env"]  # the mapping here; the worker turns it into [{name, value}] per flow run
    env_vars = env if isinstance(env, dict) else {e["name"]: e.get("value") for e in env}
    assert {k: env_vars.get(k) for k in TELEMETRY_OFF} == TELEMETRY_OFF
    assert k8s.job_manifest["metadata"]["namespace"] == "ml"
