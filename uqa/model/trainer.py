"""The training recipe's Trainer: Hugging Face Trainer on the cached features, with per-batch padding
to a multiple of 8, length-grouped batches, evaluation and a checkpoint every epoch, and the best
checkpoint (by `metric_for_best_model`) loaded at the end."""

from __future__ import annotations

import shutil
from pathlib import Path

from uqa import layout
from uqa.ops.atomic import atomic_dir
from uqa.params.schema import Params

DATA_DIR = layout.TOKENIZED_DIR


def resolve_precision(precision: str) -> str:
    """auto = bf16 where the GPU supports it, else fp16 on a GPU, fp32 on CPU."""
    import torch

    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def feature_lengths(dataset) -> list[int]:
    import pyarrow.compute as pc

    return pc.list_value_length(dataset.data.table.column("input_ids")).to_numpy().tolist()


def make_trainer(params: Params, output_dir: Path, data_dir: Path = DATA_DIR, callbacks=None, compute_metrics=None,
                 **overrides):
    """A Trainer ready to run the recipe on the cached features; tests build one directly (no launcher).
    `compute_metrics`: scores each evaluation's logits (uqa.evaluation.answers.epoch_metrics)."""
    import datasets
    from transformers import AutoTokenizer, set_seed

    from uqa.model.modeling import build_model

    set_seed(params.train.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(Path(data_dir) / "tokenizer"))
    model = build_model(params.model, tokenizer, params.train.attn_implementation)
    train_ds = datasets.load_from_disk(str(Path(data_dir) / "train"))
    eval_ds = datasets.load_from_disk(str(Path(data_dir) / "validation"))
    return build_trainer(params, model, tokenizer, train_ds, feature_lengths(train_ds), output_dir, eval_ds,
                         callbacks, compute_metrics, **overrides)


def build_trainer(params: Params, model, tokenizer, train_ds, lengths: list[int], output_dir: Path, eval_ds=None,
                  callbacks=None, compute_metrics=None, **overrides):
    """The recipe's Trainer around a model and features already in memory (the GPU benchmark calls this
    with synthetic features: it needs neither `datasets` nor files)."""
    import torch
    from torch.utils.data import SequentialSampler
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
    # after the overrides: a caller that chooses the metric gets its direction with it
    args.setdefault("greater_is_better", not args["metric_for_best_model"].endswith("loss"))
    if args["load_best_model_at_end"] and not args["metric_for_best_model"].endswith("loss") and not compute_metrics:
        raise ValueError(f"train.metric_for_best_model {t.metric_for_best_model!r} is scored by compute_metrics "
                         "(uqa.evaluation.answers.epoch_metrics); give it, or choose the best checkpoint by loss")
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

        # group_by_length would also shuffle the evaluation (a LengthGroupedSampler); compute_metrics
        # needs the logits in the features' order. Several processes: accelerate shards the batches in
        # order and gather_for_metrics puts them back in it.
        def _get_eval_sampler(self, eval_dataset):
            if eval_dataset is None or self.args.world_size > 1:
                return None
            return SequentialSampler(eval_dataset)

    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=t.pad_to_multiple_of or None)
    trainer = QATrainer(
        model=model,
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=callbacks or [],
        compute_metrics=compute_metrics,
    )
    return trainer, {"precision": precision, "tokenizer": tokenizer}


def failpoint_callback():
    from transformers import TrainerCallback

    from uqa.ops.faults import failpoint

    class FailpointCallback(TrainerCallback):
        """`UQA_FAILPOINT=train.step@N` / `train.saved@N`: kill -9 the run there (tests; uqa/ops/faults.py)."""

        def on_step_end(self, args, state, control, **kwargs):
            failpoint("train.step", at=state.global_step)

        def on_save(self, args, state, control, **kwargs):
            failpoint("train.saved", at=state.global_step)

    return FailpointCallback


LIVE_SNAPSHOT = "dvclive"  # inside each checkpoint: the curves as they were when it was saved


def live_snapshot_callback(live_dir: Path):
    """The training curves saved with each checkpoint, so that a resumed run continues them from that
    checkpoint's step (restore_live_snapshot): `dvc repro` removes dvclive/ before it runs the stage, and
    the curves of a killed run go past its last checkpoint."""
    from transformers import TrainerCallback

    class LiveSnapshotCallback(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if not state.is_world_process_zero or not Path(live_dir).is_dir():
                return
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if checkpoint.is_dir():
                with atomic_dir(checkpoint / LIVE_SNAPSHOT) as tmp:
                    shutil.copytree(live_dir, tmp, dirs_exist_ok=True)

    return LiveSnapshotCallback


def restore_live_snapshot(checkpoint: Path, live_dir: Path) -> bool:
    """dvclive/ as it was when `checkpoint` was saved (False: the checkpoint holds no snapshot)."""
    snapshot = Path(checkpoint) / LIVE_SNAPSHOT
    if not snapshot.is_dir():
        return False
    shutil.rmtree(live_dir, ignore_errors=True)
    shutil.copytree(snapshot, live_dir)
    return True
