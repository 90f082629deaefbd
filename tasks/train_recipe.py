"""The training recipe: what runs in each training process (`python -m tasks.train_recipe`, or one
per device under `accelerate launch`; tasks/train.py starts and supervises it).

inputs:  data/tokenized/{train,validation,tokenizer}, data/filtered/validation (the questions each
         epoch's EM/F1 is scored on); the params (as JSON in $UQA_TRAIN_PARAMS_JSON from the
         supervisor, else --params)
outputs: models/final (best checkpoint, tokenizer, uqa_inference.json), dvclive/, reports/train.json;
         models/checkpoints (resumable, not a DVC output)

Steps: resume point (the newest complete checkpoint of the same params and data) -> callbacks
(DVCLive, failpoints, progress lines) -> Trainer.train, scoring EM/F1 at every epoch with the evaluate
stage's code (best checkpoint: train.metric_for_best_model, f1 by default) -> the best model saved
atomically -> report.
"""

from __future__ import annotations

if __name__ == "__main__":
    # a training rank: arm the parent-death signal and the supervisor watch before anything slow is
    # imported (a supervisor killed while this rank still imports torch must not leave it behind)
    from uqa.ops.procs import watch_supervisor

    watch_supervisor()

import argparse  # noqa: E402
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from uqa import layout
from uqa.model.checkpoints import data_fingerprint, prepare_checkpoint_dir
from uqa.ops.atomic import atomic_write_json, replace_dir
from uqa.ops.runtime import training_process_env
from uqa.params.files import load_params
from uqa.params.schema import PARAMS_FILE, Params

log = logging.getLogger("tasks.train")

CHECKPOINT_DIR = layout.CHECKPOINT_DIR
FINAL_DIR = layout.MODEL_DIR
VALIDATION_FEATURES = layout.VALIDATION_FEATURES
VALIDATION_EXAMPLES = layout.VALIDATION_EXAMPLES
LIVE_DIR = layout.LIVE_DIR
REPORT = layout.report("train")
PARAMS_ENV = "UQA_TRAIN_PARAMS_JSON"  # set by tasks/train.py: the params to train with


def epoch_metrics(params: Params):
    """compute_metrics for the Trainer: each evaluation's EM/F1 on the validation questions, scored
    as the evaluate stage scores them (uqa/evaluation/answers.py)."""
    import datasets

    from uqa.evaluation.answers import epoch_metrics as scorer
    from uqa.text.windows import windows_from_table

    windows = windows_from_table(datasets.load_from_disk(str(VALIDATION_FEATURES)).data.table)
    examples = datasets.load_from_disk(str(VALIDATION_EXAMPLES)).to_pandas()
    return scorer(windows, examples, params.evaluate, params.data.keep_unanswerable,
                  sources=(VALIDATION_FEATURES, VALIDATION_EXAMPLES))


def resume_point(params: Params, trainer) -> Path | None:
    """The checkpoint to resume from: the main process checks (and clears checkpoints of another
    run) first, the other ranks then read the same answer."""
    data_hash = data_fingerprint()
    state = trainer.accelerator.state
    resume = None
    if state.is_main_process:
        resume = prepare_checkpoint_dir(params, CHECKPOINT_DIR, data_hash, is_main=True)
    trainer.accelerator.wait_for_everyone()
    if not state.is_main_process:  # read-only: the main process has cleaned up and marked the dir
        resume = prepare_checkpoint_dir(params, CHECKPOINT_DIR, data_hash, is_main=False)
    return resume


def add_callbacks(trainer, resume: Path | None) -> None:
    """DVCLive curves (main process; saved with each checkpoint, continued from it on resume), failpoints
    (tests), progress lines for the supervisor."""
    from uqa.model.progress import progress_callback
    from uqa.model.trainer import failpoint_callback, live_snapshot_callback, restore_live_snapshot

    if trainer.accelerator.state.is_main_process:
        from dvclive import Live
        from transformers.integrations import DVCLiveCallback

        if resume is not None:
            restore_live_snapshot(resume, LIVE_DIR)
        live = Live(dir=str(LIVE_DIR), dvcyaml=False, save_dvc_exp=False, resume=resume is not None, report=None)
        trainer.add_callback(DVCLiveCallback(live=live))
        trainer.add_callback(live_snapshot_callback(LIVE_DIR)())
    trainer.add_callback(failpoint_callback()())
    trainer.add_callback(progress_callback()())


def save_final_model(params: Params, trainer, tokenizer) -> None:
    """models/final, whole or not at all: every rank calls save_model (it writes on the main process
    only) into one temporary directory, which replaces models/final with the tokenizer and settings."""
    from uqa.model.settings import write_model_settings

    is_main = trainer.accelerator.state.is_main_process
    tmp = FINAL_DIR.with_name(f".{FINAL_DIR.name}.tmp")
    if is_main and tmp.exists():
        shutil.rmtree(tmp)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))
    trainer.accelerator.wait_for_everyone()
    if is_main:
        tokenizer.save_pretrained(str(tmp))
        write_model_settings(tmp, params)
        replace_dir(tmp, FINAL_DIR)


def train_report(params: Params, trainer, result, info: dict[str, Any], resume: Path | None,
                 seconds: float) -> dict[str, Any]:
    import torch

    s, state = trainer.state, trainer.accelerator.state
    return {
        "precision": info["precision"],
        "world_size": state.num_processes,
        "device": str(state.device),
        "cpu_threads_per_process": torch.get_num_threads(),
        "global_step": s.global_step,
        "epochs": s.epoch,
        "train_batch_size_per_device": params.train.train_batch_size,
        "global_batch_size": params.train.train_batch_size * params.train.gradient_accumulation_steps
        * state.num_processes,
        "train_features": len(trainer.train_dataset),
        "train_runtime_s": round(seconds, 2),
        "train_loss": result.training_loss,
        "resumed_from": str(resume) if resume else None,
        "best_checkpoint": s.best_model_checkpoint,
        "best_metric": s.best_metric,
        "metric_for_best_model": params.train.metric_for_best_model,
        "loss_history": [{"step": h["step"], "loss": h["loss"]} for h in s.log_history if "loss" in h],
        "eval_history": [{k: h[k] for k in ("epoch", "step", "eval_loss", "eval_exact", "eval_f1") if k in h}
                         for h in s.log_history if "eval_loss" in h or "eval_f1" in h],
    }


def run(params: Params) -> dict[str, Any]:
    from uqa.model.trainer import make_trainer

    # building the Trainer's arguments sets up the process group (the launcher set RANK/WORLD_SIZE)
    trainer, info = make_trainer(params, CHECKPOINT_DIR, compute_metrics=epoch_metrics(params))
    resume = resume_point(params, trainer)
    add_callbacks(trainer, resume)
    if resume is not None:
        log.info("train: resuming from %s", resume)
    started = time.time()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.time() - started
    save_final_model(params, trainer, info["tokenizer"])
    report: dict[str, Any] = {}
    if trainer.accelerator.state.is_main_process:
        report = train_report(params, trainer, result, info, resume, seconds)
        atomic_write_json(REPORT, report)
        log.info("train: done in %.1fs, %d steps, precision %s", report["train_runtime_s"], report["global_step"],
                 info["precision"])
    trainer.accelerator.wait_for_everyone()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.train_recipe")
    parser.add_argument("--params", default=PARAMS_FILE)
    args = parser.parse_args(argv)
    from uqa.workspace.stage_cli import setup_logging

    setup_logging()
    training_process_env(os.environ)
    from uqa.errors import UserError
    from uqa.params.validation import params_from_dict

    try:
        raw = os.environ.get(PARAMS_ENV)
        params = params_from_dict(json.loads(raw), PARAMS_ENV) if raw else load_params(args.params)
        run(params)
    except UserError as exc:
        print(f"error: train: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
