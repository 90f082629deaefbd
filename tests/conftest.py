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

# `import dvc` installs DVC's console log handlers on the sys.stdout/sys.stderr of that moment. Imported
# first inside a test that uses capsys, they would keep that test's capture stream, closed when the test
# ends, and every later DVC log line in this process would raise (DVC's handler turns a write error
# into a LoggingException, failing the flow task that logged it). Here they get pytest's session streams.
import dvc as _dvc_logging  # noqa: E402, F401
import pytest  # noqa: E402
import yaml  # noqa: E402

from uqa.ops.prefect_server import free_port  # noqa: E402, F401 - the tests import it from here

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


def ci_is_set() -> bool:
    """CI=true (GitHub Actions, GitLab CI and .ci/run set it; "1", "yes" count too)."""
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def skip_or_fail_in_ci(missing: str) -> None:
    """A missing prerequisite skips the test on a laptop; with CI set it fails it: a CI build must
    never pass with a check that did not run."""
    if ci_is_set():
        pytest.fail(f"CI={os.environ['CI']} but {missing}: this check did not run", pytrace=False)
    pytest.skip(f"{missing} (with CI=true this fails instead)")


def shared_is_present() -> bool:
    return all(p.exists() for p in (UQA_DIR / "train.parquet", UQA_DIR / "validation.parquet", UQA_HUB / "data",
                                    URDU_TOKENIZER / "tokenizer.json"))


# real UQA from ../shared (or $UQA_SHARED): skipped where it is absent, failed under CI=true
needs_shared = pytest.mark.needs_shared


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
    from uqa.params.overrides import deep_merge

    (root / "params.yaml").write_text(yaml.safe_dump(deep_merge(base, params), allow_unicode=True, sort_keys=False))
    (root / ".gitignore").write_text("/models/checkpoints/\n")  # DVC ignores its own outputs
    run_ok(["git", "init", "-q"], root)
    dvc("init", "-q", cwd=root)
    from uqa.workspace.demo import copy_dvc_settings

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
    from uqa.ops.prefect_server import start_prefect_server, wait_until_healthy

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


# --- the two tiers ----------------------------------------------------------------------------------
# `pytest -m "not slow"` answers in minutes; `-m slow` holds every test that starts a server, a worker,
# a training (in-process or not), a `dvc repro` that trains, or a browser. A test that uses one of the
# fixtures below (directly or through another fixture) without `@pytest.mark.slow` fails at setup,
# before the fixture starts anything. A new fixture that starts such a thing: add its name here.
SLOW_FIXTURES: dict[str, str] = {
    "prefect_server": "starts a Prefect server",
    "deployed_run": "deploys the flow and runs it on a Prefect process worker (test_deploy.py)",
    "demo_workspace": "runs `uqa demo`: the whole flow, training included",
    "trained_project": "trains a model with the train stage's recipe (test_predict_equals_evaluate.py)",
    "chromium": "starts a headless browser",
    "browser": "starts a headless browser (Playwright)",
}

# Processes the fast tier must not start even without one of those fixtures (checked when a test starts
# them): consecutive argv items -> what it is. A new kind of heavy command: add it here.
SLOW_COMMANDS: dict[tuple[str, ...], str] = {
    ("prefect", "server", "start"): "starts a Prefect server",
    ("prefect", "worker", "start"): "starts a Prefect worker",
    ("-m", "tasks.train"): "runs the train stage",
    ("-m", "tasks.train_recipe"): "runs a training",
    ("-m", "uqa_cli", "run"): "runs the whole flow",
    ("-m", "uqa_cli", "sweep"): "runs a sweep (trainings)",
    ("-m", "uqa_cli", "demo"): "runs `uqa demo`",
    ("-m", "uqa_cli", "serve"): "starts the HTTP server (`uqa serve`)",
    ("-m", "uqa_cli", "schedule"): "serves the flow on a schedule (`uqa schedule`)",
    ("gpu_train.py",): "runs the GPU benchmark (trainings)",
}
BROWSERS = {"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"}
TRAINING_STAGES = {"train", "evaluate", "register"}  # `dvc repro` of these (or of everything) trains

_ADD_THE_MARK = ("add `@pytest.mark.slow` above the test (or `pytestmark = pytest.mark.slow` at the top of its "
                 "module): the fast tier (`pytest -m \"not slow\"`) starts no server, worker, training or browser")


def slow_reason(argv) -> str | None:
    """Why the command `argv` belongs to the slow tier, or None."""
    import shlex

    if isinstance(argv, (str, bytes, os.PathLike)):
        try:
            argv = shlex.split(os.fsdecode(argv))
        except ValueError:
            return None
    argv = [os.fsdecode(a) if isinstance(a, (bytes, os.PathLike)) else str(a) for a in argv]
    if argv and Path(argv[0]).name in BROWSERS:
        return "starts a headless browser"
    names = [Path(a).name if "/" in a else a for a in argv]
    for fragment, why in SLOW_COMMANDS.items():
        n = len(fragment)
        # a script (`x.py`) counts as what runs only in the interpreter's script position, not as any
        # argument (`git diff -- benchmarks/gpu_train.py` trains nothing)
        places = range(min(2, len(names))) if fragment[0].endswith(".py") else range(len(names) - n + 1)
        if any(tuple(names[i:i + n]) == fragment for i in places):
            return why
    if "repro" in names and "dvc" in names[: names.index("repro")]:
        targets = [a for a in names[names.index("repro") + 1:] if not a.startswith("-")]
        if not targets or TRAINING_STAGES & set(targets):
            return "runs `dvc repro` of the training stages"
    if names and names[0] == "uqa" and len(names) > 1 and names[1] in {"run", "sweep", "demo"}:
        return f"runs `uqa {names[1]}`"
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if item.get_closest_marker("needs_shared") and not shared_is_present():
        skip_or_fail_in_ci(f"the real UQA data is not at {SHARED} (data/uqa, data/uqa-hub, models/urdu-xlmr-32k; "
                           "set UQA_SHARED to put it elsewhere)")
    if item.get_closest_marker("slow"):
        return
    for name in item.fixturenames:
        if name in SLOW_FIXTURES:
            pytest.fail(f"{item.nodeid} uses the fixture `{name}`, which {SLOW_FIXTURES[name]}, but is not marked "
                        f"slow: {_ADD_THE_MARK} (tests/conftest.py: SLOW_FIXTURES)", pytrace=False)


@pytest.fixture(autouse=True)
def _fast_tier_starts_nothing_heavy(request, monkeypatch):
    """In a test that is not marked slow, starting a heavy process or an in-process training fails
    the test at once, naming what to add (tests/conftest.py: SLOW_COMMANDS; transformers' Trainer)."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    nodeid = request.node.nodeid
    original_init = subprocess.Popen.__init__

    def guarded_init(self, args, *a, **kw):
        why = slow_reason(args)
        if why:
            shown = args if isinstance(args, str) else " ".join(map(str, args))
            pytest.fail(f"{nodeid} is not marked slow but {why} ({shown[:200]}): {_ADD_THE_MARK} "
                        "(tests/conftest.py: SLOW_COMMANDS)", pytrace=False)
        original_init(self, args, *a, **kw)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded_init)
    from transformers import Trainer  # imported once per session (the fast tier imports it anyway)

    def no_training(self, *a, **kw):
        pytest.fail(f"{nodeid} is not marked slow but trains a model (transformers Trainer.train): "
                    f"{_ADD_THE_MARK}", pytrace=False)

    monkeypatch.setattr(Trainer, "train", no_training)
    yield


@pytest.fixture(scope="session")
def chromium() -> str:
    """The headless browser (Debian's `chromium`): a skip on a machine without one, a failure under CI=true
    (.ci/run installs it), where a skip would pass the build without anyone having looked at the page."""
    for name in sorted(BROWSERS):
        if found := shutil.which(name):
            return found
    skip_or_fail_in_ci("chromium is not installed (apt-get install -y chromium; .ci/run installs it)")


BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser(chromium):
    """The system's chromium driven by Playwright (`executable_path`: no `playwright install`), headless,
    closed (with its process) however the test ends."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, headless=True, args=BROWSER_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="session")
def demo_workspace(prefect_server, tmp_path_factory):
    """`uqa demo` run once for the whole session, as a user runs it: the installed `uqa` command, no
    options, from a directory of their own (the workspace is its `demo-run/`), against the session's
    Prefect server. Returns (the user's directory, the command's output)."""
    user_dir = tmp_path_factory.mktemp("demo-user")
    uqa = Path(sys.executable).parent / "uqa"
    venv_bin = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=f"{venv_bin}{os.pathsep}{os.environ['PATH']}")
    r = subprocess.run([str(uqa), "demo"], cwd=user_dir, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, f"uqa demo failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return user_dir, r.stdout + r.stderr
