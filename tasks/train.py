"""Stage `train`: run the recipe (tasks/train_worker.py) in a child process (`accelerate launch` for
several) and supervise it.

inputs:  data/tokenized/{train,validation,tokenizer}; params model, train
outputs: models/final (best checkpoint: safetensors weights, config, tokenizer), dvclive/ (training
         curves), reports/train.json, reports/train.log; models/checkpoints is kept between runs for
         resuming but is not a DVC output (never pushed)

Training runs in a child process: a crash or an out-of-memory kill ends that process, not the flow
that started it, and the same command scales to several GPUs or machines (train.launcher).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from tasks.train_worker import PARAMS_ENV, PROGRESS_PREFIX
from uqa import layout
from uqa.errors import UserError
from uqa.params import PARAMS_FILE, LauncherParams, Params
from uqa.procs import SUPERVISOR_ENV, die_with_parent, stop_tree, supervisor_token

log = logging.getLogger(__name__)

LOG_FILE = layout.TRAIN_LOG
INPUTS = [*layout.split_dirs(layout.TOKENIZED_DIR), layout.TOKENIZER_DIR]


class TrainingFailed(UserError):
    pass


def launch_command(launcher: LauncherParams, params_file: str = PARAMS_FILE) -> list[str]:
    """The command that runs the recipe: the worker itself for one process on one machine, else
    `accelerate launch` with train.launcher (see README: several GPUs / machines)."""
    worker = ["-m", "tasks.train_worker", "--params", params_file]
    if _single_process(launcher):
        # `accelerate launch` would only set defaults the recipe sets itself, cost 4 s of imports and
        # export OMP_NUM_THREADS=1 (it sizes CPU threads only when told --cpu): half of a 2-core
        # machine sat idle and the demo trained 1.5x slower
        return [sys.executable, *worker]
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
    return cmd + worker


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


def run_supervised(cmd: list[str], log_file: Path, timeout_s: float | None, env: dict[str, str] | None = None) -> int:
    """Run `cmd` in its own session, tee its output to `log_file` and our logger, enforce the timeout.

    On every way out (normal exit, timeout, Ctrl-C, SIGTERM, a Prefect cancellation, any exception
    here) the launcher and every rank are stopped before this returns or raises; if this process is
    SIGKILLed, the launcher (parent-death signal) and the ranks (they watch $UQA_SUPERVISOR) follow."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=40)
    latest: dict[str, Any] = {}
    env = dict(os.environ if env is None else env)
    env[SUPERVISOR_ENV] = supervisor_token()
    writing = threading.Event()
    writing.set()
    with open(log_file, "w", encoding="utf-8") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            start_new_session=True, env=env, preexec_fn=die_with_parent,
        )

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                if not writing.is_set():
                    break  # the supervisor has moved on and closed the log
                if line.startswith(PROGRESS_PREFIX):
                    with contextlib.suppress(ValueError):
                        latest["progress"] = json.loads(line[len(PROGRESS_PREFIX):])
                    continue
                fh.write(line)
                fh.flush()
                tail.append(line.rstrip())
                log.info("train | %s", line.rstrip())

        reader = threading.Thread(target=pump, name="uqa-train-log", daemon=True)
        reader.start()
        deadline = None if not timeout_s else time.monotonic() + timeout_s
        timed_out = False
        reporter = progress_reporter.get() or TerminalProgress()
        shown = None
        try:
            while proc.poll() is None:
                if deadline is not None and time.monotonic() > deadline:
                    timed_out = True
                    break
                if latest.get("progress") is not shown:  # reported from this thread: it has the run context
                    shown = latest["progress"]
                    reporter(shown)
                time.sleep(0.2)
        except BaseException as exc:  # Ctrl-C, SIGTERM, Prefect's TerminationSignal/cancellation
            stopped = stop_tree(proc.pid, STOP_GRACE_S)
            log.error("train: interrupted (%s); stopped the training processes (%d);%s",
                      type(exc).__name__, stopped, _resume_hint())
            raise
        finally:
            stop_tree(proc.pid, STOP_GRACE_S)  # nothing may outlive the stage (timeout, stray ranks)
            proc.wait()
            reader.join(5)
            writing.clear()
            if latest.get("progress") is not shown:
                reporter(latest["progress"])
            reporter.close()
    if timed_out:
        raise TrainingFailed(
            f"training exceeded train.timeout_minutes ({timeout_s / 60:g} min) and was stopped;"
            f"{_resume_hint()} Log: {log_file}"
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


def describe_progress(p: dict[str, Any]) -> str:
    """'step 120/300 (epoch 1.6), ETA 1m20s, loss 1.234' from a UQA_PROGRESS record."""
    step, total, first = p.get("step", 0), p.get("total", 0), p.get("first_step", 0)
    text = f"step {step}/{total} (epoch {p.get('epoch', 0):g})"
    done = step - first
    if 0 < done and step < total:
        eta = (total - step) * p.get("elapsed_s", 0.0) / done
        text += f", ETA {int(eta // 60)}m{int(eta % 60):02d}s"
    if p.get("loss") is not None:
        text += f", loss {p['loss']:.4g}"
    return text


class TerminalProgress:
    """A progress bar on the terminal (only on one: a log file gets no bar)."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, p: dict[str, Any]) -> None:
        if not sys.stderr.isatty():
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=p.get("total") or None, desc="train", unit="step", file=sys.stderr, leave=False)
        self.bar.n = p.get("step", 0)
        if p.get("loss") is not None:
            self.bar.set_postfix(loss=f"{p['loss']:.4g}", epoch=p.get("epoch"), refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# who is told about training progress: the flow sets a reporter that also updates a Prefect
# progress artifact (flows/pipeline.py); `dvc repro` gets the terminal bar
progress_reporter: ContextVar[Any] = ContextVar("uqa_train_progress", default=None)


def _resume_hint() -> str:
    from tasks.train_worker import CHECKPOINT_DIR, complete_checkpoints

    ckpts = complete_checkpoints(CHECKPOINT_DIR)
    if ckpts:
        return f" the next run with the same params and data resumes from {ckpts[-1]}."
    return " no complete checkpoint yet: the next run starts from the beginning."


def train(params: Params, params_file: str = PARAMS_FILE, log_file: Path = LOG_FILE) -> dict[str, Any]:
    for dep in INPUTS:
        if not dep.exists():
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
    return json.loads(layout.report("train").read_text())


def run(params: Params, params_file: str = "params.yaml") -> Any:
    """The stage as `dvc repro` and the Prefect flow both run it."""
    return train(params, params_file)


def main(argv: list[str] | None = None) -> int:
    from uqa.stage_cli import stage_main

    return stage_main("train", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
