"""Shared fixtures: offline, quiet, single-threaded; real UQA from ../shared when it is there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# before any library import: offline hub, no telemetry, deterministic and uncontended CPU work
_HOME = Path(tempfile.mkdtemp(prefix="uqa-tests-"))
os.environ.update(
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    HF_HOME=str(_HOME / "hf"),
    DVC_NO_ANALYTICS="1",
    PREFECT_SERVER_ANALYTICS_ENABLED="false",
    DO_NOT_TRACK="1",
    PREFECT_HOME=str(_HOME / "prefect"),
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
    # logs go to the API only inside the prefect_server fixture: outside it, Prefect would start a
    # temporary server at exit just to deliver them
    PREFECT_LOGGING_TO_API_ENABLED="false",
    OMP_NUM_THREADS="1",
    MKL_NUM_THREADS="1",
    TOKENIZERS_PARALLELISM="false",
    HF_DATASETS_DISABLE_PROGRESS_BARS="1",
    HF_HUB_DISABLE_PROGRESS_BARS="1",
    TRANSFORMERS_NO_ADVISORY_WARNINGS="1",
    GIT_AUTHOR_NAME="uqa tests",
    GIT_AUTHOR_EMAIL="tests@localhost",
    GIT_COMMITTER_NAME="uqa tests",
    GIT_COMMITTER_EMAIL="tests@localhost",
)

import pytest  # noqa: E402
import yaml  # noqa: E402

from uqa.server import free_port  # noqa: E402, F401 - the tests import it from here

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("UQA_SHARED", REPO.parent / "shared"))
UQA_DIR = SHARED / "data" / "uqa"
UQA_HUB = SHARED / "data" / "uqa-hub"
URDU_TOKENIZER = SHARED / "models" / "urdu-xlmr-32k"

TINY_CONFIG = {
    "model_type": "xlm-roberta",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
}

# the shipped demo data, and a tiny model for it (the demo tokenizer's longest input is ~60 tokens)
DEMO_SOURCE = {"train": str(REPO / "demo/data/train.jsonl"), "validation": str(REPO / "demo/data/validation.jsonl")}
DEMO_TINY_CONFIG = {**TINY_CONFIG, "max_position_embeddings": 130}


def demo_tiny_params(**train) -> dict:
    """Params (as a dict) for the demo data with a tokenizer trained on it and a tiny scratch model."""
    return {
        "data": {"source": dict(DEMO_SOURCE)},
        "model": {"init": "scratch", "config": dict(DEMO_TINY_CONFIG)},
        "tokenize": {"vocab_size": 800},
        "train": {"epochs": 1, "train_batch_size": 32, "eval_batch_size": 64, "gradient_accumulation_steps": 1,
                  "learning_rate": 2e-3, "logging_steps": 5, **train},
    }


def stop_process_group(proc: subprocess.Popen, grace: float = 20) -> None:
    import signal

    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


needs_shared = pytest.mark.skipif(
    not (UQA_DIR / "train.parquet").exists() or not URDU_TOKENIZER.exists(),
    reason=f"real UQA data not found at {SHARED} (CI has it)",
)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_HOME, ignore_errors=True)


def run_ok(cmd: list[str], cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_ok([sys.executable, "-m", "dvc", *args], cwd=cwd)


def make_project(root: Path, params: dict) -> Path:
    """A git + DVC project with this repo's dvc.yaml and the given params.yaml (one commit)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "dvc.yaml", root / "dvc.yaml")
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    from uqa.params import deep_merge

    (root / "params.yaml").write_text(yaml.safe_dump(deep_merge(base, params), allow_unicode=True, sort_keys=False))
    (root / ".gitignore").write_text("/models/checkpoints/\n")  # DVC ignores its own outputs
    run_ok(["git", "init", "-q"], root)
    dvc("init", "-q", cwd=root)
    from uqa.demo import copy_dvc_settings

    copy_dvc_settings(root)  # the project's .dvc/config and offline plots template
    run_ok(["git", "add", "-A"], root)
    run_ok(["git", "commit", "-q", "-m", "init"], root)
    return root


@pytest.fixture
def project_factory(tmp_path):
    def factory(params: dict, name: str = "project") -> Path:
        return make_project(tmp_path / name, params)

    return factory


def hub_sample_params(**sections) -> dict:
    """Params for the shared hub-shaped sample with the shared tokenizer and a tiny scratch model."""
    params = {
        "data": {"source": str(UQA_HUB)},
        "model": {"tokenizer": str(URDU_TOKENIZER), "init": "scratch", "config": dict(TINY_CONFIG)},
        "train": {"epochs": 1, "train_batch_size": 16, "eval_batch_size": 32, "gradient_accumulation_steps": 1,
                  "learning_rate": 1e-3, "logging_steps": 5, "max_steps": 12},
    }
    for key, value in sections.items():
        params[key] = {**params.get(key, {}), **value}
    return params


@pytest.fixture(scope="session")
def prefect_server():
    """A real `prefect server start` on 127.0.0.1:<free port> with a temporary PREFECT_HOME; stopped after."""
    from uqa.server import start_prefect_server, wait_until_healthy

    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = open(_HOME / "prefect-server.log", "w")
    # the UI asks /ui-settings for the API address: without these it says port 4200 whatever --port is
    proc = start_prefect_server(port, log, dict(os.environ, PREFECT_SERVER_API_HOST="127.0.0.1",
                                                PREFECT_SERVER_API_PORT=str(port), PREFECT_UI_API_URL=url),
                                minimal=False)
    try:
        wait_until_healthy(url, proc, 120, _HOME / "prefect-server.log")
    except BaseException:
        stop_process_group(proc)
        raise
    from prefect.context import refresh_global_settings_context
    from prefect.settings import PREFECT_API_URL, PREFECT_LOGGING_TO_API_ENABLED, temporary_settings

    os.environ["PREFECT_API_URL"] = url  # for subprocesses (workers, CLI) the tests start
    os.environ["PREFECT_LOGGING_TO_API_ENABLED"] = "true"
    refresh_global_settings_context()  # and for Prefect's own threads, which carry no settings context
    with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_LOGGING_TO_API_ENABLED: True}):
        yield url
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)  # send the last run logs while the server is still there
    os.environ.pop("PREFECT_API_URL", None)
    os.environ["PREFECT_LOGGING_TO_API_ENABLED"] = "false"
    refresh_global_settings_context()
    stop_process_group(proc)
    log.close()
