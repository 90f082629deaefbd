"""The two test tiers and the conftest guard: a test that starts a server, a worker, a training or a
browser without `@pytest.mark.slow` fails (naming what to add) before it starts anything; a test that
needs ../shared or a browser skips on a laptop and fails under CI=true. Checked by running pytest on
small test files with this suite's conftest, as a contributor's new test would be run."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import REPO, slow_reason

PROBE = '''
import os, shutil, subprocess, sys
from pathlib import Path
import pytest
import conftest
from conftest import needs_shared

shutil.which = lambda *a, **kw: None  # no browser on this "machine"
conftest.SLOW_FIXTURES["heavy_thing"] = "stands in for a server in this check"  # how a new one is added
@pytest.fixture
def heavy_thing(request):
    (Path(os.environ["PROBE_DIR"]) / f"started-for-{request.node.name}").write_text("")  # only slow tests get here
    return "running"


def test_unmarked_uses_a_heavy_fixture(heavy_thing):
    pass


@pytest.mark.slow
def test_marked_uses_a_heavy_fixture(heavy_thing):
    assert heavy_thing == "running"


def test_unmarked_uses_the_prefect_server(prefect_server):
    pass


def test_unmarked_starts_a_server():
    subprocess.run([sys.executable, "-m", "prefect", "server", "start", "--port", "9"], timeout=5)


def test_unmarked_runs_dvc_repro_of_everything():
    subprocess.run([sys.executable, "-m", "dvc", "repro"], timeout=5)


def test_unmarked_trains():
    from transformers import Trainer

    Trainer.train(None)


def test_unmarked_runs_a_cheap_command():
    subprocess.run([sys.executable, "-c", "pass"], check=True)


@needs_shared
def test_needs_the_shared_data():
    pass


@pytest.mark.slow
def test_needs_a_browser(chromium):
    pass
'''


def run_probe(tmp_path: Path, ci: str | None, *select: str) -> dict[str, tuple[str, str]]:
    """Run PROBE (or the tests `select` picks, e.g. "-k", "needs") with this suite's conftest;
    {test name: (outcome, message)}."""
    probe_dir = tmp_path / f"ci-{ci}"
    probe_dir.mkdir()
    (probe_dir / "test_probe.py").write_text(PROBE)
    env = dict(os.environ, PYTHONPATH=str(REPO / "tests"), PROBE_DIR=str(probe_dir),
               UQA_SHARED=str(tmp_path / "no-shared-here"))
    env.pop("CI", None)
    if ci is not None:
        env["CI"] = ci
    report = probe_dir / "report.xml"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                        f"--rootdir={probe_dir}", f"--junitxml={report}", "-o", "addopts=", *select, str(probe_dir)],
                       cwd=probe_dir, env=env, capture_output=True, text=True, timeout=600)
    assert report.exists(), r.stdout[-3000:] + r.stderr[-3000:]
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None:
            outcomes[case.get("name")] = ("failed", bad.get("message", ""))
        elif case.find("skipped") is not None:
            outcomes[case.get("name")] = ("skipped", case.find("skipped").get("message", ""))
        else:
            outcomes[case.get("name")] = ("passed", "")
    outcomes["started"] = sorted(p.name for p in probe_dir.glob("started-for-*"))
    return outcomes


@pytest.fixture(scope="module")
def laptop(tmp_path_factory):
    return run_probe(tmp_path_factory.mktemp("laptop"), ci=None)


@pytest.fixture(scope="module")
def ci(tmp_path_factory):
    return run_probe(tmp_path_factory.mktemp("ci"), "true", "-k", "needs")


ADD = "add `@pytest.mark.slow` above the test"


def test_an_unmarked_test_with_a_heavy_fixture_fails_before_the_fixture_runs(laptop, tmp_path):
    outcome, message = laptop["test_unmarked_uses_a_heavy_fixture"]
    assert outcome == "failed" and "uses the fixture `heavy_thing`, which stands in for a server" in message
    assert ADD in message and "SLOW_FIXTURES" in message
    outcome, message = laptop["test_unmarked_uses_the_prefect_server"]
    assert outcome == "failed" and "`prefect_server`, which starts a Prefect server" in message and ADD in message
    assert laptop["test_marked_uses_a_heavy_fixture"] == ("passed", "")  # marked: the fixture runs
    assert laptop["started"] == ["started-for-test_marked_uses_a_heavy_fixture"]  # and only then


def test_an_unmarked_test_starting_a_heavy_process_or_training_fails(laptop):
    for name, what in (("test_unmarked_starts_a_server", "starts a Prefect server"),
                       ("test_unmarked_runs_dvc_repro_of_everything", "runs `dvc repro` of the training stages"),
                       ("test_unmarked_trains", "trains a model (transformers Trainer.train)")):
        outcome, message = laptop[name]
        assert outcome == "failed" and f"is not marked slow but {what}" in message and ADD in message, (name, message)
    assert laptop["test_unmarked_runs_a_cheap_command"] == ("passed", "")


def test_missing_shared_data_or_browser_skips_on_a_laptop_and_fails_in_ci(laptop, ci):
    for name, missing in (("test_needs_the_shared_data", "the real UQA data is not at"),
                          ("test_needs_a_browser", "chromium is not installed")):
        outcome, message = laptop[name]
        assert outcome == "skipped" and missing in message and "with CI=true this fails instead" in message
        outcome, message = ci[name]
        assert outcome == "failed" and "Failed: CI=true but " in message and missing in message, message


def test_what_counts_as_slow():
    py = sys.executable
    assert slow_reason([py, "-m", "prefect", "worker", "start", "--pool", "p"]) == "starts a Prefect worker"
    assert slow_reason(["/usr/bin/chromium", "--headless"]) == "starts a headless browser"
    assert slow_reason([py, "-m", "dvc", "repro", "train"]) == "runs `dvc repro` of the training stages"
    assert slow_reason([py, "-m", "uqa_cli", "demo"]) == "runs `uqa demo`"
    assert slow_reason("/venv/bin/uqa run --project x") == "runs `uqa run`"
    # the data stages and everyday commands stay in the fast tier
    for cheap in ([py, "-m", "dvc", "repro", "filter"], [py, "-m", "dvc", "status", "--json"],
                  [py, "-m", "tasks.tokenize"], ["git", "init", "-q"], [py, "-m", "uqa_cli", "predict", "--json"]):
        assert slow_reason(cheap) is None, cheap
