"""The GPU benchmark is one command a GPU session runs as-is: check here, on CPU, that it runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO, SHARED, needs_shared

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_train  # noqa: E402


@pytest.mark.slow  # trains every setting for a few steps
def test_gpu_benchmark_runs_every_setting_through_the_pipeline_trainer(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_train.py"), "--smoke", "--steps", "2",
                        "--warmup", "1", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{") and line.endswith("}")]
    assert [x["name"] for x in lines] == [s["name"] for s in gpu_train.SETTINGS if not s.get("compile")]
    assert not [x for x in lines if "error" in x], lines
    assert all(x["features_per_s"] > 0 and x["mfu"] > 0 for x in lines)
    assert {x["precision_used"] for x in lines} == {"bf16", "fp32"}
    seed = next(x for x in lines if x["name"] == "seed padding")
    ours = next(x for x in lines if x["name"] == "pipeline default")
    assert seed["padding_fraction"] > ours["padding_fraction"]  # all windows at 512 vs per-batch padding
    written = json.loads((tmp_path / "gpu_train.json").read_text())
    assert written["summary"]["projected_seed_recipe_minutes"]["pipeline default"] > 0
    assert "| pipeline default | bf16 | 2 x 2 | off |" in r.stdout


def test_gpu_benchmark_peak_comes_from_the_device_name():
    assert gpu_train.peak_for("NVIDIA H100 80GB HBM3", None)[0] == 989.4
    assert gpu_train.peak_for("NVIDIA H100 PCIe", None)[0] == 756.0
    assert gpu_train.peak_for("NVIDIA H200", None)[0] == 989.4
    assert gpu_train.peak_for("Some Future GPU", 123.0) == (123.0, "--peak-tflops")
    with pytest.raises(SystemExit, match="--peak-tflops"):
        gpu_train.peak_for("Some Future GPU", None)


@needs_shared
def test_committed_window_lengths_are_those_of_real_uqa(tmp_path):
    gpu_train.write_lengths(SHARED, path=tmp_path / "lengths.json")
    fresh = json.loads((tmp_path / "lengths.json").read_text())
    committed = json.loads(gpu_train.LENGTHS_FILE.read_text())
    assert fresh["lengths"] == committed["lengths"]
    assert max(committed["lengths"]) <= 512 and 150 < committed["mean"] < 300
