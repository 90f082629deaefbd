"""Loading a version for serving: uqa.predict.Predictor with the torch model, or with an ONNX
Runtime session (fp32, or int8 dynamic quantization) in the model's place.

The ONNX graph is exported once per version and cached beside it (`<version dir>/onnx/`); the
Predictor's windows, span search and threshold are untouched, so a backend can only change answers
through its logits, and `agreement` measures exactly that."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from uqa.errors import UserError
from uqa.serving.models import Resolved, ServedModel

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "onnx-int8")


def load_served(resolved: Resolved, backend: str = "torch", window_batch: int = 64,
                onnx_cache: Path | None = None) -> ServedModel:
    from uqa.predict import Predictor

    if backend not in BACKENDS:
        raise UserError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    started = time.monotonic()
    predictor = Predictor(resolved.path, batch_size=window_batch)
    notes: list[str] = []
    if backend != "torch":
        from uqa.serving.onnx_backend import onnx_model

        predictor.model = onnx_model(predictor.model, resolved.path, quantize=backend == "onnx-int8",
                                     cache=onnx_cache)
    return ServedModel(resolved, predictor, backend, time.monotonic() - started, notes=notes)
