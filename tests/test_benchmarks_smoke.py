"""The GPU benchmark is one command a GPU session runs as-is: check here, on CPU, that it runs."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_gpu_benchmark_runs(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_train.py"), "--smoke", "--synthetic",
                        "--steps", "2", "--batch", "2"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{") and line.endswith("}")]
    assert {(x["precision"], x["seed_padding"]) for x in lines} == {
        ("fp32", True), ("bf16", True), ("fp32", False), ("bf16", False)}
    assert all(x["features_per_s"] > 0 and 0 < x["mfu"] for x in lines)
    assert "projected_seed_recipe_minutes" in r.stdout
