"""ONNX Runtime in place of the torch model: exported once per version, int8 by dynamic quantization.

optimum's ONNX exporter (optimum-onnx 0.1.0, the newest) requires transformers < 4.58 and would
downgrade this project's transformers 5; the export therefore uses torch.onnx.export (the dynamo
exporter, falling back to the TorchScript one), with dynamic batch and sequence axes, and
onnxruntime.quantization.quantize_dynamic for int8 weights.

The export is cached per version, keyed by the weights' sha256, under `$UQA_ONNX_CACHE` (default
`~/.cache/uqa/onnx/`), not inside registry/<name>/<version>/: that directory is a DVC output and must
stay byte-for-byte what was registered."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace

from uqa.errors import UserError, first_line

log = logging.getLogger(__name__)

INSTALL = "pip install onnxruntime onnx onnxscript"


def _require():
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as exc:
        raise UserError(f"--backend onnx needs ONNX Runtime ({exc.name} is not installed): {INSTALL}") from None
    return onnxruntime


def cache_root() -> Path:
    return Path(os.environ.get("UQA_ONNX_CACHE") or Path.home() / ".cache" / "uqa" / "onnx")


class OnnxQA:
    """Called like the torch model by uqa.model.inference.window_logits: keyword tensors in, start/end logits out."""

    def __init__(self, path: Path, threads: int | None = None):
        ort = _require()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}

    def eval(self):
        return self

    def __call__(self, **inputs):
        import torch

        feeds = {k: v.cpu().numpy() for k, v in inputs.items() if k in self.inputs}
        start, end = self.session.run(["start_logits", "end_logits"], feeds)
        return SimpleNamespace(start_logits=torch.from_numpy(start), end_logits=torch.from_numpy(end))


def export(model, dest: Path, with_types: bool) -> None:
    """torch model -> dest (an .onnx file), written atomically."""
    import torch

    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if with_types else [])
    example = {n: torch.ones((2, 16), dtype=torch.long) for n in names}
    model = model.eval()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        out = Path(tmp) / dest.name
        try:
            batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (), str(out), kwargs=example, input_names=names,
                                  output_names=["start_logits", "end_logits"], dynamo=True,
                                  dynamic_shapes={n: {0: batch, 1: seq} for n in names}, opset_version=18,
                                  external_data=False)
        except Exception as exc:  # some architectures trace only with the TorchScript exporter
            log.warning("dynamo ONNX export failed (%s: %s); using the TorchScript exporter",
                        type(exc).__name__, first_line(exc, 200))
            axes = {n: {0: "batch", 1: "sequence"} for n in [*names, "start_logits", "end_logits"]}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (), str(out), kwargs=example, input_names=names,
                                  output_names=["start_logits", "end_logits"], dynamic_axes=axes, opset_version=18,
                                  dynamo=False)
        os.replace(out, dest)


def quantize(src: Path, dest: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        out = Path(tmp) / dest.name
        quantize_dynamic(str(src), str(out), weight_type=QuantType.QInt8)
        os.replace(out, dest)


def onnx_model(torch_model, model_dir: Path, quantize_int8: bool, with_types: bool, digest: str,
               cache: Path | None = None, threads: int | None = None) -> OnnxQA:
    """The version's ONNX model (fp32 or int8), exported on first use and cached by weights sha256."""
    _require()
    where = (cache or cache_root()) / digest[:32]
    fp32 = where / "model.onnx"
    if not fp32.exists():
        log.info("exporting %s to ONNX (once per version): %s", model_dir, fp32)
        try:
            export(torch_model, fp32, with_types)
        except Exception as exc:
            shutil.rmtree(where, ignore_errors=True)
            raise UserError(f"{model_dir}: ONNX export failed ({type(exc).__name__}: {first_line(exc)}); "
                            "serve it with --backend torch") from None
    if not quantize_int8:
        return OnnxQA(fp32, threads)
    int8 = where / "model.int8.onnx"
    if not int8.exists():
        log.info("quantizing %s to int8 (dynamic quantization): %s", fp32, int8)
        quantize(fp32, int8)
    return OnnxQA(int8, threads)
