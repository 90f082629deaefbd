"""Stage `train`: launch the recipe (tasks/train_worker.py) with `accelerate launch` and supervise it.

inputs:  data/tokenized/{train,validation,tokenizer}; params model, train
outputs: models/final (best checkpoint: safetensors weights, config, tokenizer), dvclive/ (training
         curves), reports/train.json, reports/train.log; models/checkpoints is kept between runs for
         resuming but is not a DVC output (never pushed)

Training runs in a child process: a crash or an out-of-memory kill ends that process, not the flow
that started it, and the same command scales to several GPUs or machines (train.launcher).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from tasks.train_worker import PARAMS_ENV
from uqa.errors import UserError
from uqa.params import PARAMS_FILE, LauncherParams, Params

log = logging.getLogger(__name__)

LOG_FILE = Path("reports/train.log")
PARAMS = ["model", "train"]
DEPS = ["data/tokenized/train", "data/tokenized/validation", "data/tokenized/tokenizer"]
OUTS = ["models/final", "dvclive"]  # + models/checkpoints: resumable scratch, not a DVC output
METRICS = ["reports/train.json"]


class TrainingFailed(UserError):
    pass


def launch_command(launcher: LauncherParams, params_file: str = PARAMS_FILE) -> list[str]:
    """`accelerate launch` arguments from train.launcher (see README: several GPUs / machines)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if launcher.config_file:
        cmd += ["--config_file", launcher.config_file]
    else:
        cmd += ["--num_processes", str(launcher.num_processes), "--num_machines", str(launcher.num_machines)]
        if launcher.num_processes > 1 or launcher.num_machines > 1:
            # --multi_gpu is what starts several processes (on CPU too, over gloo); --cpu alone runs one
            cmd += ["--multi_gpu", "--machine_rank", str(launcher.machine_rank)]
            if launcher.main_process_ip:
                cmd += ["--main_process_ip", launcher.main_process_ip]
            if launcher.main_process_port:
                cmd += ["--main_process_port", str(launcher.main_process_port)]
        # precision is set by the recipe (train.precision), compilation by train.torch_compile
        cmd += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += list(launcher.extra_args)
    cmd += ["-m", "tasks.train_worker", "--params", params_file]
    return cmd


def _hint(tail: list[str]) -> str:
    text = "\n".join(tail)
    if "out of memory" in text.lower():
        return " It ran out of memory: lower train.train_batch_size (raise gradient_accumulation_steps to keep the global batch)."
    return ""


def run_supervised(cmd: list[str], log_file: Path, timeout_s: float | None, env: dict[str, str] | None = None) -> int:
    """Run `cmd` in its own process group, tee its output to `log_file` and our logger, enforce the timeout."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=40)
    with open(log_file, "w", encoding="utf-8") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            start_new_session=True, env=env,
        )

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                fh.write(line)
                fh.flush()
                tail.append(line.rstrip())
                log.info("train | %s", line.rstrip())

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        deadline = None if not timeout_s else time.monotonic() + timeout_s
        timed_out = False
        while proc.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                timed_out = True
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.2)
        proc.wait()
        reader.join(5)
    if timed_out:
        raise TrainingFailed(
            f"training exceeded train.timeout_minutes ({timeout_s / 60:g} min) and was stopped; "
            f"checkpoints saved so far are resumed on the next run. Log: {log_file}"
        )
    if proc.returncode != 0:
        # the recipe reports bad params or inputs as one "error: ..." line; show that, not the
        # launcher's traceback around it
        errors = [line for line in tail if line.startswith("error: train: ")]
        if errors:
            raise TrainingFailed(f"{errors[-1].removeprefix('error: train: ')} (full log: {log_file})")
        last = "\n  ".join(list(tail)[-15:])
        raise TrainingFailed(
            f"training process exited with status {proc.returncode}.{_hint(list(tail))} "
            f"Full log: {log_file}. Last lines:\n  {last}"
        )
    return proc.returncode


def train(params: Params, params_file: str = PARAMS_FILE, log_file: Path = LOG_FILE) -> dict[str, Any]:
    import json

    for dep in DEPS:
        if not Path(dep).exists():
            raise UserError(f"{dep} is missing: run the tokenize stage first (dvc repro tokenize)")
    cmd = launch_command(params.train.launcher, params_file)
    timeout = params.train.timeout_minutes * 60 if params.train.timeout_minutes else None
    env = dict(os.environ)
    # the recipe gets exactly these params (params.yaml, or what a caller passed in), as JSON
    env[PARAMS_ENV] = json.dumps(params.to_dict())
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    log.info("train: %s", " ".join(cmd))
    run_supervised(cmd, log_file, timeout, env)
    return json.loads(Path("reports/train.json").read_text())


def run(params: Params, params_file: str = "params.yaml") -> Any:
    """The stage as `dvc repro` and the Prefect flow both run it."""
    return train(params, params_file)


def main(argv: list[str] | None = None) -> int:
    from uqa.stage import stage_main

    return stage_main("train", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
