"""Training checkpoints: which can be resumed (whole, of the same params and data), and the
fingerprint that says so. A run killed at any moment resumes from its newest complete checkpoint."""

from __future__ import annotations

import json
import logging
import shutil
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from uqa import layout
from uqa.ops.atomic import atomic_write_json
from uqa.ops.hashing import files_sha256
from uqa.params.schema import Params

log = logging.getLogger("tasks.train")

DATA_DIR = layout.TOKENIZED_DIR
CHECKPOINT_DIR = layout.CHECKPOINT_DIR
FINGERPRINT = "run_fingerprint.json"  # in CHECKPOINT_DIR: the run its checkpoints belong to


def data_fingerprint(data_dir: Path = DATA_DIR) -> str:
    """Hash of the feature bytes (Arrow files, tokenizer files): what the model is trained on.

    Not hashed: `state.json` (its fingerprint changes when the bytes do not) and hidden files such
    as the `.gitignore` DVC writes beside its outputs, at a moment that depends on how the last
    `dvc repro` ended: hashing it made a run killed mid-training restart instead of resuming."""
    files = sorted(p for p in Path(data_dir).rglob("*")
                   if p.is_file() and p.name != "state.json" and not p.name.startswith("."))
    return files_sha256(files, names_relative_to=Path(data_dir))


def run_fingerprint(params: Params, data_hash: str) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed: model, training recipe, data, and how each epoch
    is scored (evaluate: the best checkpoint so far was chosen with those settings)."""
    train = asdict(params.train)
    for key in ("timeout_minutes", "launcher", "logging_steps", "dataloader_num_workers"):
        train.pop(key)  # how a run is operated, not what it computes
    return {"model": asdict(params.model), "train": train, "evaluate": asdict(params.evaluate),
            "squad2": params.data.keep_unanswerable, "data": data_hash}


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
