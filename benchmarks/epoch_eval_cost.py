"""What EM/F1 at every epoch costs (issue 30): the demo measured, the seed recipe projected.

1. The demo (`demo/params.yaml` over params.yaml, 5 epochs, 2 cores): the same training twice in this
   process, with the per-epoch EM/F1 (the recipe: the Trainer gathers the logits and
   uqa.evaluation.answers.epoch_metrics scores them) and without (eval_loss only, the seed's way). Each
   evaluation's `eval_runtime` (the Trainer's: the evaluation loop, compute_metrics included) and the
   whole training's wall time.
2. The scoring alone at the seed recipe's scale: every window of the real UQA validation rows of
   ../shared (8,721 rows; windows of 512 tokens, stride 128, the Urdu tokenizer) with fixed-seed random
   logits through `score_logits` (span search, SQuAD and Urdu EM/F1, no-answer threshold in SQuAD2
   mode): the CPU time each evaluation adds, whatever the GPU, scaled to UQA's 16,824 validation rows.

    python benchmarks/epoch_eval_cost.py [--shared ../shared] [--repeats 3] [--skip-demo]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from common import ROOT, machine, median, shared_dir, table, timed, write_result

UQA_VALIDATION_ROWS = 16_824  # the full UQA validation split (../shared holds 8,721 of its rows)


def demo_params():
    from uqa.params.files import apply_overrides, load_params
    from uqa.workspace.demo import write_demo_params

    with tempfile.TemporaryDirectory() as tmp:
        params_file = Path(tmp) / "params.yaml"
        write_demo_params(params_file)  # what `uqa demo` trains with, its data where this checkout has it
        apply_overrides(params_file, {"data": {"source": {split: str(ROOT / "demo" / "data" / f"{split}.jsonl")
                                                          for split in ("train", "validation")}}})
        return load_params(params_file)


def train_once(params, workdir: Path, with_metrics: bool) -> dict[str, Any]:
    from transformers import TrainerCallback

    from tasks.train_recipe import epoch_metrics
    from uqa.model.trainer import make_trainer
    from uqa.workspace.dvc_ops import working_dir

    evaluations: list[dict[str, float]] = []

    class Record(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            evaluations.append({k: metrics[k] for k in ("epoch", "eval_runtime", "eval_f1") if k in metrics})

    overrides = {} if with_metrics else {"metric_for_best_model": "eval_loss"}
    with working_dir(workdir):
        trainer, _ = make_trainer(params, workdir / f"ck-{with_metrics}", callbacks=[Record()],
                                  compute_metrics=epoch_metrics(params) if with_metrics else None, **overrides)
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    return {"train_s": round(seconds, 2), "evaluations": evaluations,
            "eval_s_per_epoch": round(median([e["eval_runtime"] for e in evaluations]), 4)}


def demo_side(repeats: int) -> dict[str, Any]:
    from tasks.download import download
    from tasks.filter import filter_rows
    from tasks.tokenize import tokenize_splits
    from uqa.workspace.dvc_ops import working_dir

    params = demo_params()
    runs: dict[str, list[dict[str, Any]]] = {"with EM/F1": [], "loss only": []}
    with tempfile.TemporaryDirectory(prefix="epoch-eval-") as tmp:
        work = Path(tmp)
        with working_dir(work):
            download(params.data)
            filter_rows(params.data)
            tokenize_splits(params)
        for _ in range(repeats):  # interleaved: the machine's drift hits both sides alike
            runs["with EM/F1"].append(train_once(params, work, True))
            runs["loss only"].append(train_once(params, work, False))
    summary = {side: {"train_s_median": median([r["train_s"] for r in rs]),
                      "eval_s_per_epoch_median": median([r["eval_s_per_epoch"] for r in rs])}
               for side, rs in runs.items()}
    return {"runs": runs, "summary": summary, "epochs": params.train.epochs}


def scoring_side(shared: Path, repeats: int) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    from uqa.evaluation.answers import score_logits
    from uqa.model.inference import WindowLogits
    from uqa.model.postprocess import pad_ragged
    from uqa.params.schema import EvaluateParams
    from uqa.text.encoding import encode_windows
    from uqa.text.tokenizer import load_tokenizer

    rows = pd.read_parquet(shared / "data" / "uqa" / "validation.parquet")
    tok = load_tokenizer(str(shared / "models" / "urdu-xlmr-32k"))
    out = {}
    for mode, frame in (("answerable-only", rows[~rows["is_impossible"]].reset_index(drop=True)),
                        ("squad2", rows)):
        windows = encode_windows(tok.backend_tokenizer, frame["question"].str.strip().tolist(),
                                 frame["context"].tolist(), 512, 128)
        real = pad_ragged(np.ones(len(windows.input_ids), bool), windows.row_splits, False, bool)
        rng = np.random.default_rng(0)
        logits = WindowLogits(np.where(real, rng.normal(size=real.shape), -np.inf).astype(np.float32),
                              np.where(real, rng.normal(size=real.shape), -np.inf).astype(np.float32))
        times = [timed(lambda f=frame, w=windows, lg=logits, m=mode: score_logits(
            lg, w, f, EvaluateParams(), m == "squad2"))[0] for _ in range(repeats)]
        seconds = median(times)
        out[mode] = {"rows": len(frame), "windows": int(windows.n_windows), "score_s": round(seconds, 3),
                     "times": [round(t, 3) for t in times],
                     f"projected_s_at_{UQA_VALIDATION_ROWS}_rows": round(seconds * UQA_VALIDATION_ROWS / len(rows), 3)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-demo", action="store_true")
    args = parser.parse_args()
    result: dict[str, Any] = {"machine": machine()}
    if not args.skip_demo:
        result["demo"] = demo_side(args.repeats)
        s = result["demo"]["summary"]
        print(table(["side", "training s (median)", "evaluation s per epoch (median)"],
                    [[side, v["train_s_median"], v["eval_s_per_epoch_median"]] for side, v in s.items()]))
    result["scoring"] = scoring_side(shared_dir(args.shared), args.repeats)
    print(table(["mode", "rows", "windows", "score_logits s", f"at {UQA_VALIDATION_ROWS} rows"],
                [[m, v["rows"], v["windows"], v["score_s"], v[f"projected_s_at_{UQA_VALIDATION_ROWS}_rows"]]
                 for m, v in result["scoring"].items()]))
    print(write_result("epoch_eval_cost_scoring" if args.skip_demo else "epoch_eval_cost", result))


if __name__ == "__main__":
    main()
