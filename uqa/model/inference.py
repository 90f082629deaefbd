"""Batched inference over windows: sorted by length, padded per batch, logits back in window order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from uqa.model.postprocess import ExampleSpans, best_spans, pad_ragged
from uqa.text.windows import Windows


def pick_device(prefer: str | None = None):
    import torch

    if prefer:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def autocast_dtype(precision: str, device):
    import torch

    if device.type != "cuda":
        return None
    if precision in ("auto", "bf16"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16":
        return torch.float16
    return None


@dataclass
class WindowLogits:
    start: np.ndarray  # [n_windows, max_len] float32, -inf on padding
    end: np.ndarray


def window_logits(model, windows: Windows, pad_token_id: int, batch_size: int = 32, precision: str = "auto",
                  device=None, progress: str | None = None) -> WindowLogits:
    """`progress`: a label for a progress bar on the terminal (none when stderr is not a terminal)."""
    import sys

    import torch
    from tqdm.auto import tqdm

    device = device or next(model.parameters()).device
    model.eval()
    lengths = windows.lengths
    n = windows.n_windows
    width = int(lengths.max()) if n else 0
    start = np.full((n, width), -np.inf, dtype=np.float32)
    end = np.full((n, width), -np.inf, dtype=np.float32)
    order = np.argsort(-lengths, kind="stable")  # longest first: similar lengths share a batch
    dtype = autocast_dtype(precision, device)
    use_types = windows.token_type_ids is not None
    bar = tqdm(total=n, desc=progress, unit="window", leave=False, file=sys.stderr,
               disable=progress is None or not sys.stderr.isatty())
    with torch.inference_mode(), bar:
        for b in range(0, n, batch_size):
            idx = order[b : b + batch_size]
            lens = lengths[idx]
            max_len = int(lens.max())
            ids = np.full((len(idx), max_len), pad_token_id, dtype=np.int64)
            types = np.zeros((len(idx), max_len), dtype=np.int64) if use_types else None
            for row, w in enumerate(idx):
                a, z = windows.row_splits[w], windows.row_splits[w + 1]
                ids[row, : z - a] = windows.input_ids[a:z]
                if use_types:
                    types[row, : z - a] = windows.token_type_ids[a:z]
            mask = (np.arange(max_len)[None, :] < lens[:, None]).astype(np.int64)
            inputs = {"input_ids": torch.from_numpy(ids).to(device), "attention_mask": torch.from_numpy(mask).to(device)}
            if use_types:
                inputs["token_type_ids"] = torch.from_numpy(types).to(device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                out = model(**inputs)
            s = out.start_logits.float().cpu().numpy()
            e = out.end_logits.float().cpu().numpy()
            for row, w in enumerate(idx):
                start[w, : lens[row]] = s[row, : lens[row]]
                end[w, : lens[row]] = e[row, : lens[row]]
            bar.update(len(idx))
    return WindowLogits(start, end)


def spans_for_windows(logits: WindowLogits, windows: Windows, n_best: int, max_answer_length: int) -> ExampleSpans:
    cs = pad_ragged(windows.char_start, windows.row_splits, -1, np.int64)
    ce = pad_ragged(windows.char_end, windows.row_splits, -1, np.int64)
    ctx = (cs >= 0) & (ce > cs)
    return best_spans(
        logits.start, logits.end, ctx, windows.window_to_example, cs, ce,
        n_best=n_best, max_answer_length=max_answer_length,
    )
