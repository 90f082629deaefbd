"""Training recipes for `uqa demo`: held-out F1 and training time per recipe and seed, on this machine.

    python benchmarks/demo_recipes.py [--recipes NAME,...] [--seeds 42,1,7] → results/demo_recipes.json

One demo workspace (uqa demo's: the shipped data, demo/params.yaml laid over params.yaml) gets its data
stages once; then every recipe × seed trains in this process exactly as the train stage's worker does
(tasks/train_recipe.run: the recipe's Trainer, an evaluation and a checkpoint per epoch, the best
checkpoint by eval loss) and is scored by the evaluate stage's own function. Each recipe is a set of
overrides on demo/params.yaml; the seed is train.seed. Torch uses its default threads (all cores)
unless OMP_NUM_THREADS says otherwise. Train s is the Trainer's own run time (reports/train.json).
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, write_result  # noqa: E402

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
XLMR = {"model_type": "xlm-roberta", "type_vocab_size": 1}
RECIPES: dict[str, dict] = {
    # what the demo trained before: XLM-R's shape (learnt absolute positions), dropout 0.1, 8 epochs
    "xlmr-8ep": {"model": {"config": XLMR}, "train": {"epochs": 8}},
    "xlmr-8ep-nodropout": {"model": {"config": {**XLMR, **NO_DROPOUT}}, "train": {"epochs": 8}},
    "xlmr-10ep-nodropout": {"model": {"config": {**XLMR, **NO_DROPOUT}}, "train": {"epochs": 10}},
    "xlmr-6ep-nodropout-b16": {"model": {"config": {**XLMR, **NO_DROPOUT}},
                               "train": {"epochs": 6, "train_batch_size": 16, "learning_rate": 2e-3}},
    # ModernBERT's shape (rotary positions, no dropout by default): demo/params.yaml since this benchmark
    "modernbert-3ep": {"train": {"epochs": 3}},
    "modernbert-4ep": {"train": {"epochs": 4}},
    "modernbert-5ep": {},
}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--seeds", default="42,1,7")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging

    logging.basicConfig(level=logging.WARNING)
    from tasks import download, source, tokenize
    from tasks import filter as filter_stage
    from tasks import train_recipe as recipe
    from tasks.evaluate import evaluate
    from uqa.params.files import load_params
    from uqa.params.validation import params_from_dict
    from uqa.workspace.demo import demo_workspace

    work = Path(tempfile.mkdtemp(prefix="uqa-demo-recipes-"))
    rows, results = [], []
    try:
        workspace = demo_workspace(work / "demo")
        os.chdir(workspace)
        demo = load_params("params.yaml")
        for stage in (source, download, filter_stage, tokenize):
            stage.run(demo)
        base = demo.to_dict()
        for name in args.recipes.split(","):
            for seed in [int(s) for s in args.seeds.split(",")]:
                params = params_from_dict(_merge(base, _merge(RECIPES[name], {"train": {"seed": seed}})), name)
                for out in ("models", "dvclive"):
                    shutil.rmtree(out, ignore_errors=True)
                started = time.perf_counter()
                report = recipe.run(params)
                metrics = evaluate(params)
                result = {"recipe": name, "seed": seed, "model_type": params.model.config["model_type"],
                          "epochs": params.train.epochs, "steps": report["global_step"],
                          "train_s": report["train_runtime_s"], "train_and_evaluate_s": time.perf_counter() - started,
                          "f1": metrics["f1"], "exact_match": metrics["exact_match"],
                          "cpu_threads": report["cpu_threads_per_process"]}
                results.append(result)
                rows.append([name, seed, result["steps"], result["train_s"], round(result["f1"], 2)])
                print(f"{name} seed {seed}: {result['steps']} steps, {result['train_s']:.1f} s, F1 {result['f1']:.2f}",
                      flush=True)
    finally:
        os.chdir(Path(__file__).resolve().parent)
        shutil.rmtree(work, ignore_errors=True)
    print(table(["recipe", "seed", "steps", "train s", "F1"], rows))
    print(write_result("demo_recipes", {"recipes": {n: RECIPES[n] for n in args.recipes.split(",")},
                                        "results": results}))


if __name__ == "__main__":
    main()
