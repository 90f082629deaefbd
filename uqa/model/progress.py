"""Training progress: the `UQA_PROGRESS {json}` lines the training process prints, and how the
supervisor shows them (a bar on a terminal; the flow adds a Prefect progress artifact).

The record: step, total, epoch, loss (the last logged), first_step (a resumed run starts past 0:
the ETA counts from there), elapsed_s, and `evals`: each evaluation so far ({epoch, f1, exact}: EM/F1
on the validation questions, scored as the evaluate stage scores them)."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from contextvars import ContextVar
from typing import Any

PROGRESS_PREFIX = "UQA_PROGRESS "  # progress lines for the supervisor, not for the log


def parse_progress(line: str) -> dict[str, Any] | None:
    """The record of a progress line; None for any other line (or a garbled progress line)."""
    if not line.startswith(PROGRESS_PREFIX):
        return None
    with contextlib.suppress(ValueError):
        record = json.loads(line[len(PROGRESS_PREFIX):])
        return record if isinstance(record, dict) else None
    return None


def is_progress(line: str) -> bool:
    return line.startswith(PROGRESS_PREFIX)


def describe_progress(p: dict[str, Any]) -> str:
    """'step 120/300 (epoch 1.6), ETA 1m20s, loss 1.234' from a progress record."""
    step, total, first = p.get("step", 0), p.get("total", 0), p.get("first_step", 0)
    text = f"step {step}/{total} (epoch {p.get('epoch', 0):g})"
    done = step - first
    if 0 < done and step < total:
        eta = (total - step) * p.get("elapsed_s", 0.0) / done
        text += f", ETA {int(eta // 60)}m{int(eta % 60):02d}s"
    if p.get("loss") is not None:
        text += f", loss {p['loss']:.4g}"
    evals = [e for e in p.get("evals") or [] if isinstance(e, dict) and e.get("f1") is not None]
    if evals:
        last, best = evals[-1], max(evals, key=lambda e: e["f1"])
        exact = "" if last.get("exact") is None else f", EM {last['exact']:.2f}"
        text += f"; validation F1 {last['f1']:.2f}{exact} (epoch {last.get('epoch', 0):g})"
        if best is not last:
            text += f", best F1 {best['f1']:.2f} (epoch {best.get('epoch', 0):g})"
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


def eval_record(epoch: float | None, metrics: dict[str, Any]) -> dict[str, Any]:
    exact = metrics.get("eval_exact")
    return {"epoch": round(epoch or 0.0, 3), "f1": round(float(metrics["eval_f1"]), 4),
            "exact": None if exact is None else round(float(exact), 4)}


def progress_callback():
    """A transformers TrainerCallback class printing one progress line per second at most (and at
    the end), on the main process only."""
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def __init__(self) -> None:
            self.last_loss: float | None = None
            self.printed = 0.0
            self.started = time.monotonic()
            self.first_step: int | None = None
            self.evals: list[dict[str, Any]] = []

        def _emit(self, state, force: bool = False) -> None:
            now = time.monotonic()
            if not force and now - self.printed < 1.0:
                return
            self.printed = now
            if self.first_step is None:
                self.first_step = state.global_step
            print(PROGRESS_PREFIX + json.dumps({
                "step": state.global_step, "total": state.max_steps, "epoch": round(state.epoch or 0.0, 3),
                "loss": self.last_loss, "first_step": self.first_step, "elapsed_s": round(now - self.started, 1),
                "evals": self.evals,
            }), flush=True)

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.monotonic()
            self.first_step = state.global_step  # resumed runs start past 0: the ETA counts from here
            # a resumed run continues the evaluations its checkpoint had made
            self.evals = [eval_record(h.get("epoch"), h) for h in state.log_history if "eval_f1" in h]

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.last_loss = float(logs["loss"])

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if metrics and "eval_f1" in metrics:
                self.evals.append(eval_record(state.epoch, metrics))
                if state.is_world_process_zero:
                    self._emit(state, force=True)

        def on_step_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self._emit(state)

        def on_train_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self._emit(state, force=True)

    return ProgressCallback
