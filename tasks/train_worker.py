"""The training recipe, run by `accelerate launch` (one process per device; see tasks/train.py).

Hugging Face Trainer on the cached features: per-batch padding to a multiple of 8, length-grouped
batches, evaluation and a checkpoint every epoch, the best checkpoint (by `metric_for_best_model`)
saved to models/final. Resumes from the newest complete checkpoint of the same params and data.
"""

from __future__ import annotations

if __name__ == "__main__":
    # a training rank: arm the parent-death signal and the supervisor watch before anything slow is
    # imported (a supervisor killed while this rank still imports torch must not leave it behind)
    from uqa.procs import watch_supervisor

    watch_supervisor()

import argparse  # noqa: E402
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from uqa import layout
from uqa.atomic import atomic_write_json, replace_dir
from uqa.params import Params, load_params

log = logging.getLogger("tasks.train")

DATA_DIR = layout.TOKENIZED_DIR
CHECKPOINT_DIR = layout.CHECKPOINT_DIR
FINAL_DIR = layout.MODEL_DIR
LIVE_DIR = layout.LIVE_DIR
REPORT = layout.report("train")
FINGERPRINT = "run_fingerprint.json"
PARAMS_ENV = "UQA_TRAIN_PARAMS_JSON"  # set by tasks/train.py: the params to train with
PROGRESS_PREFIX = "UQA_PROGRESS "  # progress lines for the supervisor, not for the log


def resolve_precision(precision: str) -> str:
    """auto = bf16 where the GPU supports it, else fp16 on a GPU, fp32 on CPU."""
    import torch

    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def data_fingerprint(data_dir: Path = DATA_DIR) -> str:
    """Hash of the feature bytes (Arrow files, tokenizer files): what the model is trained on.

    Not hashed: `state.json` (its fingerprint changes when the bytes do not) and hidden files such
    as the `.gitignore` DVC writes beside its outputs, at a moment that depends on how the last
    `dvc repro` ended: hashing it made a run killed mid-training restart instead of resuming."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(data_dir).rglob("*")
                       if p.is_file() and p.name != "state.json" and not p.name.startswith(".")):
        h.update(str(path.relative_to(data_dir)).encode())
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def run_fingerprint(params: Params, data_hash: str) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed: model, training recipe, data."""
    train = asdict(params.train)
    for key in ("timeout_minutes", "launcher", "logging_steps", "dataloader_num_workers"):
        train.pop(key)  # how a run is operated, not what it computes
    return {"model": asdict(params.model), "train": train, "data": data_hash}


def intact_file(path: Path) -> bool:
    """Whether a checkpoint file is whole: a safetensors file as long as its header says, a torch
    pickle (zip) with its central directory; a file cut off by a kill or a full disk is neither."""
    try:
        if path.suffix == ".safetensors":
            with open(path, "rb") as fh:
                header_len = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(header_len))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
            return path.stat().st_size == 8 + header_len + end
        if path.suffix in (".pt", ".pth", ".bin"):
            return zipfile.is_zipfile(path)
        return True
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


def complete_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Checkpoints that can be resumed, oldest first: trainer_state.json (written last by Trainer)
    parses, weights and optimizer state are there, and no file in them is truncated."""
    found = []
    for ckpt in Path(checkpoint_dir).glob("checkpoint-*"):
        try:
            step = int(ckpt.name.split("-")[-1])
            json.loads((ckpt / "trainer_state.json").read_text())
        except (ValueError, OSError):
            continue
        has_weights = any((ckpt / n).exists() for n in ("model.safetensors", "pytorch_model.bin"))
        if not (has_weights and (ckpt / "optimizer.pt").exists()):
            continue
        if all(intact_file(f) for f in ckpt.iterdir() if f.is_file()):
            found.append((step, ckpt))
    return [c for _, c in sorted(found)]


def prepare_checkpoint_dir(params: Params, checkpoint_dir: Path, data_hash: str, is_main: bool) -> Path | None:
    """Returns the checkpoint to resume from, or None; clears checkpoints of another run."""
    fp = run_fingerprint(params, data_hash)
    marker = Path(checkpoint_dir) / FINGERPRINT
    previous = None
    if marker.exists():
        try:
            previous = json.loads(marker.read_text())
        except ValueError:
            previous = None
    if previous != fp:
        if is_main:
            if any(Path(checkpoint_dir).glob("checkpoint-*")):
                log.info("train: checkpoints in %s are from other params or data; starting fresh", checkpoint_dir)
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
            atomic_write_json(marker, fp)
        return None
    ckpts = complete_checkpoints(checkpoint_dir)
    if is_main:  # a checkpoint cut off mid-save would be picked by Trainer's own rotation: remove it
        for partial in set(Path(checkpoint_dir).glob("checkpoint-*")) - set(ckpts):
            log.warning("train: skipping incomplete or truncated checkpoint %s (removed)", partial)
            shutil.rmtree(partial, ignore_errors=True)
    return ckpts[-1] if ckpts else None


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def feature_lengths(dataset) -> list[int]:
    import pyarrow.compute as pc

    return pc.list_value_length(dataset.data.table.column("input_ids")).to_numpy().tolist()


def make_trainer(params: Params, output_dir: Path, data_dir: Path = DATA_DIR, callbacks=None, **overrides):
    """A Trainer ready to run the recipe on the cached features; tests build one directly (no launcher)."""
    import datasets
    from transformers import AutoTokenizer, set_seed

    from uqa.modeling import build_model

    set_seed(params.train.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(Path(data_dir) / "tokenizer"))
    model = build_model(params.model, tokenizer, params.train.attn_implementation)
    train_ds = datasets.load_from_disk(str(Path(data_dir) / "train"))
    eval_ds = datasets.load_from_disk(str(Path(data_dir) / "validation"))
    return build_trainer(params, model, tokenizer, train_ds, feature_lengths(train_ds), output_dir, eval_ds,
                         callbacks, **overrides)


def build_trainer(params: Params, model, tokenizer, train_ds, lengths: list[int], output_dir: Path, eval_ds=None,
                  callbacks=None, **overrides):
    """The recipe's Trainer around a model and features already in memory (the GPU benchmark calls this
    with synthetic features: it needs neither `datasets` nor files)."""
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
    from transformers.trainer_pt_utils import LengthGroupedSampler

    t = params.train
    precision = resolve_precision(t.precision)
    args = dict(
        output_dir=str(output_dir),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        per_device_train_batch_size=t.train_batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_ratio,  # < 1 is a ratio of the total steps in transformers 5
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model=t.metric_for_best_model,
        greater_is_better=not t.metric_for_best_model.endswith("loss"),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        report_to="none",  # DVCLive is added explicitly (the default would rewrite dvc.yaml)
        ddp_find_unused_parameters=False,
        torch_compile=t.torch_compile,
        dataloader_num_workers=t.dataloader_num_workers,
        disable_tqdm=True,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
    )
    args.update(overrides)
    training_args = TrainingArguments(**args)

    class QATrainer(Trainer):
        # Trainer drops unknown columns before it builds the sampler and then re-measures every
        # feature; the lengths are already in the Arrow list offsets.
        def _get_train_sampler(self, train_dataset=None):
            if self.args.train_sampling_strategy == "group_by_length":
                return LengthGroupedSampler(
                    self.args.train_batch_size * self.args.gradient_accumulation_steps, lengths=lengths
                )
            return super()._get_train_sampler(train_dataset)

    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=t.pad_to_multiple_of or None)
    trainer = QATrainer(
        model=model,
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=callbacks or [],
    )
    return trainer, {"precision": precision, "tokenizer": tokenizer}


def _failpoint_callback():
    from transformers import TrainerCallback

    from uqa.faults import failpoint

    class FailpointCallback(TrainerCallback):
        """`UQA_FAILPOINT=train.step@N` / `train.saved@N`: kill -9 the run there (tests; uqa/faults.py)."""

        def on_step_end(self, args, state, control, **kwargs):
            failpoint("train.step", at=state.global_step)

        def on_save(self, args, state, control, **kwargs):
            failpoint("train.saved", at=state.global_step)

    return FailpointCallback


def _progress_callback():
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        """One `UQA_PROGRESS {json}` line per second at most (and at the end): step/total, epoch, last
        loss. The supervisor (tasks/train.py) turns them into a progress bar and a Prefect artifact."""

        def __init__(self) -> None:
            self.last_loss: float | None = None
            self.printed = 0.0
            self.started = time.monotonic()
            self.first_step: int | None = None

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
            }), flush=True)

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.monotonic()
            self.first_step = state.global_step  # resumed runs start past 0: the ETA counts from here

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.last_loss = float(logs["loss"])

        def on_step_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self._emit(state)

        def on_train_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self._emit(state, force=True)

    return ProgressCallback


def run(params: Params) -> dict[str, Any]:
    FailpointCallback = _failpoint_callback()
    data_hash = data_fingerprint()
    # building the Trainer's arguments sets up the process group (the launcher set RANK/WORLD_SIZE)
    trainer, info = make_trainer(params, CHECKPOINT_DIR)
    state = trainer.accelerator.state
    if state.is_main_process:
        resume = prepare_checkpoint_dir(params, CHECKPOINT_DIR, data_hash, is_main=True)
    trainer.accelerator.wait_for_everyone()
    if not state.is_main_process:  # read-only: the main process has cleaned up and marked the dir
        resume = prepare_checkpoint_dir(params, CHECKPOINT_DIR, data_hash, is_main=False)
    if state.is_main_process:
        from dvclive import Live
        from transformers.integrations import DVCLiveCallback

        live = Live(dir=str(LIVE_DIR), dvcyaml=False, save_dvc_exp=False, resume=resume is not None, report=None)
        trainer.add_callback(DVCLiveCallback(live=live))
    trainer.add_callback(FailpointCallback())
    trainer.add_callback(_progress_callback()())
    if resume is not None:
        log.info("train: resuming from %s", resume)
    started = time.time()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    # every rank calls save_model (it writes on the main process only) into the same temporary dir
    tmp = FINAL_DIR.with_name(f".{FINAL_DIR.name}.tmp")
    if state.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))
    trainer.accelerator.wait_for_everyone()
    report: dict[str, Any] = {}
    if state.is_main_process:
        info["tokenizer"].save_pretrained(str(tmp))
        from uqa.predict import write_model_settings  # uqa_inference.json: the windowing predict must use

        write_model_settings(tmp, params)
        replace_dir(tmp, FINAL_DIR)
        s = trainer.state
        report = {
            "precision": info["precision"],
            "world_size": state.num_processes,
            "device": str(state.device),
            "cpu_threads_per_process": torch_threads(),
            "global_step": s.global_step,
            "epochs": s.epoch,
            "train_batch_size_per_device": params.train.train_batch_size,
            "global_batch_size": params.train.train_batch_size
            * params.train.gradient_accumulation_steps
            * state.num_processes,
            "train_features": len(trainer.train_dataset),
            "train_runtime_s": round(time.time() - started, 2),
            "train_loss": result.training_loss,
            "resumed_from": str(resume) if resume else None,
            "best_checkpoint": s.best_model_checkpoint,
            "best_metric": s.best_metric,
            "metric_for_best_model": params.train.metric_for_best_model,
            "loss_history": [
                {"step": h["step"], "loss": h["loss"]} for h in s.log_history if "loss" in h
            ],
            "eval_history": [
                {k: h[k] for k in ("epoch", "step", "eval_loss") if k in h} for h in s.log_history if "eval_loss" in h
            ],
        }
        atomic_write_json(REPORT, report)
        log.info("train: done in %.1fs, %d steps, precision %s", report["train_runtime_s"], s.global_step, info["precision"])
    trainer.accelerator.wait_for_everyone()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.train_worker")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    from uqa.stage_cli import setup_logging

    setup_logging()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from uqa.errors import UserError
    from uqa.params import params_from_dict

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
