"""Stage `train`: run the recipe (tasks/train_recipe.py) in a child process (`accelerate launch` for
several) and supervise it.

inputs:  data/tokenized/{train,validation,tokenizer}; params model, train
outputs: models/final (best checkpoint: safetensors weights, config, tokenizer), dvclive/ (training
         curves), reports/train.json, reports/train.log; models/checkpoints is kept between runs for
         resuming but is not a DVC output (never pushed)

Training runs in a child process: a crash or an out-of-memory kill ends that process, not the flow
that started it, and the same command scales to several GPUs or machines (train.launcher).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from tasks.train_recipe import PARAMS_ENV
from uqa import layout
from uqa.errors import UserError
from uqa.model.checkpoints import CHECKPOINT_DIR, complete_checkpoints
from uqa.model.progress import TerminalProgress, is_progress, parse_progress, progress_reporter
from uqa.ops.jsonfile import read_json
from uqa.ops.procs import SUPERVISOR_ENV, die_with_parent, stop_tree, supervisor_token
from uqa.ops.runtime import training_process_env
from uqa.params.schema import PARAMS_FILE, LauncherParams, Params

log = logging.getLogger(__name__)

LOG_FILE = layout.TRAIN_LOG
# what the recipe reads, and the stage that makes each: checked before any process is launched
INPUTS = {**{split: "tokenize" for split in layout.split_dirs(layout.TOKENIZED_DIR)}, layout.TOKENIZER_DIR: "tokenize",
          layout.VALIDATION_EXAMPLES: "filter"}


class TrainingFailed(UserError):
    pass


def launch_command(launcher: LauncherParams, params_file: str = PARAMS_FILE) -> list[str]:
    """The command that runs the recipe: the recipe itself for one process on one machine, else
    `accelerate launch` with train.launcher (see README: several GPUs / machines)."""
    recipe = ["-m", "tasks.train_recipe", "--params", params_file]
    if _single_process(launcher):
        # `accelerate launch` would only set defaults the recipe sets itself, cost 4 s of imports and
        # export OMP_NUM_THREADS=1 (it sizes CPU threads only when told --cpu): half of a 2-core
        # machine sat idle and the demo trained 1.5x slower
        return [sys.executable, *recipe]
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
        if "OMP_NUM_THREADS" not in os.environ and "--num_cpu_threads_per_process" not in launcher.extra_args:
            # each local rank gets its share of this machine's CPUs (accelerate's default is 1)
            cmd += ["--num_cpu_threads_per_process", str(cpu_threads_per_rank(launcher))]
    cmd += list(launcher.extra_args)
    return cmd + recipe


def _single_process(launcher: LauncherParams) -> bool:
    return (launcher.num_processes == 1 and launcher.num_machines == 1 and not launcher.config_file
            and not launcher.extra_args)


def cpu_threads_per_rank(launcher: LauncherParams) -> int:
    local_ranks = max(1, launcher.num_processes // launcher.num_machines)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, usable // local_ranks)


def _hint(tail: list[str]) -> str:
    text = "\n".join(tail)
    if "out of memory" in text.lower():
        return " It ran out of memory: lower train.train_batch_size (raise gradient_accumulation_steps to keep the global batch)."
    return ""


STOP_GRACE_S = 5.0  # SIGTERM, then SIGKILL: the whole tree is gone well within 10 s
TAIL_LINES = 40  # the log's last lines kept for the error message


class _LogPump:
    """Reads the training process's output on a thread: progress lines to `latest`, every other
    line to the log file, our logger and a short tail for the error message."""

    def __init__(self, proc: subprocess.Popen, log_fh) -> None:
        self.proc, self.log_fh = proc, log_fh
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.latest: dict[str, Any] | None = None
        self.shown: dict[str, Any] | None = None  # the record last handed to the progress display
        self.writing = threading.Event()
        self.writing.set()
        self.thread = threading.Thread(target=self._pump, name="uqa-train-log", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if not self.writing.is_set():
                break  # the supervisor has moved on and closed the log
            if is_progress(line):
                self.latest = parse_progress(line) or self.latest
                continue
            self.log_fh.write(line)
            self.log_fh.flush()
            self.tail.append(line.rstrip())
            log.info("train | %s", line.rstrip())

    def stop(self) -> None:
        self.thread.join(5)
        self.writing.clear()


def _spawn(cmd: list[str], log_fh, env: dict[str, str] | None) -> subprocess.Popen:
    """The launcher in its own session (the terminal's Ctrl-C reaches us, and we stop the tree), with
    a parent-death signal; the ranks watch $UQA_SUPERVISOR."""
    env = dict(os.environ if env is None else env)
    env[SUPERVISOR_ENV] = supervisor_token()
    log_fh.write("$ " + " ".join(cmd) + "\n")
    log_fh.flush()
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            start_new_session=True, env=env, preexec_fn=die_with_parent)


def _wait(proc: subprocess.Popen, pump: _LogPump, timeout_s: float | None, show) -> bool:
    """Wait for the process, showing its progress (from this thread: it has the run context);
    True when the timeout ended the wait."""
    deadline = None if not timeout_s else time.monotonic() + timeout_s
    while proc.poll() is None:
        if deadline is not None and time.monotonic() > deadline:
            return True
        if pump.latest is not pump.shown:
            pump.shown = pump.latest
            show(pump.shown)
        time.sleep(0.2)
    return False


def _failure(returncode: int, timed_out: bool, timeout_s: float | None, tail: list[str],
             log_file: Path) -> TrainingFailed | None:
    """What went wrong, as one message: the timeout, the recipe's own `error:` line (bad params or
    inputs, not the launcher's traceback around it), or the exit status with the last lines."""
    if timed_out:
        return TrainingFailed(f"training exceeded train.timeout_minutes ({timeout_s / 60:g} min) and was stopped;"
                              f"{_resume_hint()} Log: {log_file}")
    if returncode == 0:
        return None
    errors = [line for line in tail if line.startswith("error: train: ")]
    if errors:
        return TrainingFailed(f"{errors[-1].removeprefix('error: train: ')} (full log: {log_file})")
    last = "\n  ".join(tail[-15:])
    return TrainingFailed(f"training process exited with status {returncode}.{_hint(tail)} "
                          f"Full log: {log_file}. Last lines:\n  {last}")


def run_supervised(cmd: list[str], log_file: Path, timeout_s: float | None, env: dict[str, str] | None = None) -> int:
    """Run `cmd` in its own session, tee its output to `log_file` and our logger, enforce the timeout.

    On every way out (normal exit, timeout, Ctrl-C, SIGTERM, a Prefect cancellation, any exception
    here) the launcher and every rank are stopped before this returns or raises; if this process is
    SIGKILLed, the launcher (parent-death signal) and the ranks (they watch $UQA_SUPERVISOR) follow."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    reporter = progress_reporter.get() or TerminalProgress()
    with open(log_file, "w", encoding="utf-8") as fh:
        proc = _spawn(cmd, fh, env)
        pump = _LogPump(proc, fh)
        try:
            timed_out = _wait(proc, pump, timeout_s, reporter)
        except BaseException as exc:  # Ctrl-C, SIGTERM, Prefect's TerminationSignal/cancellation
            stopped = stop_tree(proc.pid, STOP_GRACE_S)
            log.error("train: interrupted (%s); stopped the training processes (%d);%s",
                      type(exc).__name__, stopped, _resume_hint())
            raise
        finally:
            stop_tree(proc.pid, STOP_GRACE_S)  # nothing may outlive the stage (timeout, stray ranks)
            proc.wait()
            pump.stop()
            if pump.latest is not pump.shown:
                reporter(pump.latest)  # the last step, shown even when it came after the last poll
            reporter.close()
    failure = _failure(proc.returncode, timed_out, timeout_s, list(pump.tail), log_file)
    if failure is not None:
        raise failure
    return proc.returncode


def _resume_hint() -> str:
    ckpts = complete_checkpoints(CHECKPOINT_DIR)
    if ckpts:
        return f" the next run with the same params and data resumes from {ckpts[-1]}."
    return " no complete checkpoint yet: the next run starts from the beginning."


def train(params: Params, params_file: str = PARAMS_FILE, log_file: Path = LOG_FILE) -> dict[str, Any]:
    for dep, stage in INPUTS.items():
        if not dep.exists():
            raise UserError(f"{dep} is missing: run the {stage} stage first (dvc repro {stage})")
    cmd = launch_command(params.train.launcher, params_file)
    timeout = params.train.timeout_minutes * 60 if params.train.timeout_minutes else None
    env = dict(os.environ)
    # the recipe gets exactly these params (params.yaml, or what a caller passed in), as JSON
    env[PARAMS_ENV] = json.dumps(params.to_dict())
    training_process_env(env)
    log.info("train: %s", " ".join(cmd))
    run_supervised(cmd, log_file, timeout, env)
    return read_json(layout.report("train"))


def run(params: Params, params_file: str = PARAMS_FILE) -> Any:
    """The stage as `dvc repro` and the Prefect flow both run it."""
    return train(params, params_file)


def main(argv: list[str] | None = None) -> int:
    from uqa.workspace.stage_cli import stage_main

    return stage_main("train", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
