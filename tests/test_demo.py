"""`uqa demo`, as a user runs it (once per session: conftest's `demo_workspace`), does what the README says."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_demo_trains_registers_and_answers(demo_workspace):
    user_dir, out = demo_workspace
    workspace = user_dir / "demo-run"
    assert "Traceback" not in out
    stages = re.search(r"^stages: (.*)$", out, re.M).group(1)
    assert {s.rsplit(" ", 1)[1] for s in stages.split(", ")} == {"Completed"}, stages
    metrics = json.loads((workspace / "metrics/eval.json").read_text())
    # README: F1 above 90 on the held-out demo questions (benchmarks/README.md §8)
    assert metrics["f1"] > 90 and metrics["n_questions"] > 200, metrics
    assert re.search(rf"F1 {metrics['f1']:.2f} .* on {metrics['n_questions']} validation questions", out)
    assert "registered uqa-qa v0.0.1 (promoted to prod" in out
    # EM/F1 at every epoch (dvclive, as `dvc plots` draws them), the kept checkpoint the best by F1, and
    # evaluate's F1 for it exactly that epoch's
    train = json.loads((workspace / "reports/train.json").read_text())
    epochs = round(train["epochs"])
    for name in ("f1", "exact"):
        rows = (workspace / "dvclive/plots/metrics/eval" / f"{name}.tsv").read_text().splitlines()
        assert rows[0] == f"step\t{name}" and len(rows) == 1 + epochs == 1 + 5, rows
    history = train["eval_history"]
    kept = next(h for h in history if train["best_checkpoint"].endswith(f"checkpoint-{h['step']}"))
    assert train["metric_for_best_model"] == "f1" and kept["eval_f1"] == max(h["eval_f1"] for h in history)
    assert metrics["f1"] == pytest.approx(kept["eval_f1"], abs=1e-9)
    # the demo's own project: params.yaml is the demo's, the user's directory holds nothing else
    assert sorted(p.name for p in user_dir.iterdir()) == ["demo-run"]
    assert "demo-data/train.jsonl" in (workspace / "params.yaml").read_text()

    # the command the demo suggests, from the same directory: `--model prod` finds the demo's registry
    suggested = re.search(r"^try: uqa predict (.*)$", out, re.M).group(1)
    question = re.search(r'--question "([^"]+)"', suggested).group(1)
    context = re.search(r'--context "([^"]+)"', suggested).group(1)
    r = subprocess.run([str(Path(sys.executable).parent / "uqa"), "predict", "--model", "prod", "--question", question,
                        "--context", context, "--json"], cwd=user_dir, capture_output=True, text=True, timeout=300,
                       env=os.environ.copy())
    assert r.returncode == 0, r.stderr[-3000:]
    assert "using the demo's registry in" in r.stderr, r.stderr
    answer = json.loads(r.stdout)
    assert answer["no_answer"] or context[answer["start"]:answer["end"]] == answer["answer"]


def test_a_second_demo_is_cached(demo_workspace):
    """README: a second `uqa demo` shows every stage cached, except source, which re-checks the data."""
    user_dir, _ = demo_workspace
    r = subprocess.run([str(Path(sys.executable).parent / "uqa"), "demo"], cwd=user_dir, capture_output=True,
                       text=True, timeout=900, env=dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}"
                                                                          f"{os.environ['PATH']}"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    stages = dict(s.rsplit(" ", 1) for s in re.search(r"^stages: (.*)$", r.stdout, re.M).group(1).split(", "))
    assert stages.pop("source") == "Completed"
    assert set(stages.values()) == {"Cached"}, stages
    assert "nothing new registered: uqa-qa v0.0.1 is prod (register is up to date" in r.stdout, r.stdout[-3000:]
