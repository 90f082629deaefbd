"""Shared helpers for the benchmarks: paths, timing, medians, result files, machine facts."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def shared_dir(arg: str | None) -> Path:
    shared = Path(arg) if arg else ROOT.parent / "shared"
    if not (shared / "data" / "uqa" / "train.parquet").exists():
        raise SystemExit(f"real UQA not found under {shared}: pass --shared PATH")
    return shared


@contextlib.contextmanager
def tests_importable() -> Iterator[None]:
    """Import from tests/ (conftest, a test module) without taking on the tests' environment:
    importing conftest sets it in os.environ (single-threaded tokenizer, one OMP thread, offline,
    its own HF_HOME), and a stage started from a benchmark would inherit it and be measured as a
    user never runs it. This process's environment is put back as it was on the way out."""
    import shutil

    sys.path.insert(0, str(ROOT / "tests"))
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        conftest = sys.modules.get("conftest")
        if conftest is not None:
            shutil.rmtree(conftest._HOME, ignore_errors=True)


def make_project(path: Path, params: dict[str, Any]) -> Path:
    """tests/conftest.make_project (a git + DVC project with this repository's stages), in this
    benchmark's environment (tests_importable)."""
    with tests_importable():
        import conftest
    return conftest.make_project(path, params)


def answerable_train_sample(shared: Path, n_examples: int, max_seq_length: int = 512, stride: int = 128):
    """n random answerable rows of real UQA train (random_state 0) as the tokenize stage makes them with
    the Urdu tokenizer: (tokenizer, windows without offsets, labels)."""
    import pandas as pd

    from uqa.text.encoding import encode_labelled_windows
    from uqa.text.tokenizer import load_tokenizer

    df = pd.read_parquet(shared / "data/uqa/train.parquet")
    df = df[~df["is_impossible"]].sample(n=n_examples, random_state=0).reset_index(drop=True)
    answer = df["answer"]
    starts = (df["answer_start"] + answer.str.len() - answer.str.lstrip().str.len()).to_numpy()
    ends = starts + answer.str.strip().str.len().to_numpy()
    tok = load_tokenizer(str(shared / "models/urdu-xlmr-32k"))
    windows, labels = encode_labelled_windows(tok.backend_tokenizer, df["question"].str.strip().tolist(),
                                              df["context"].tolist(), starts, ends, max_seq_length, stride,
                                              with_offsets=False)
    return tok, windows, labels


def machine() -> dict[str, Any]:
    import torch

    info = {
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    try:
        model = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo"], capture_output=True, text=True)
        info["cpu"] = model.stdout.split(":", 1)[-1].strip()
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def median(values: list[float]) -> float:
    return statistics.median(values)


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "command": " ".join([Path(sys.executable).name, *sys.argv]),
               "machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    return path


def table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


class CountingCollator:
    """Wraps a collator; records (features, non-pad tokens, padded tokens) of every batch."""

    def __init__(self, inner):
        self.inner, self.batches = inner, []

    def __call__(self, features):
        batch = self.inner(features)
        mask = batch["attention_mask"]
        self.batches.append((int(mask.shape[0]), int(mask.sum()), int(mask.numel())))
        return batch
