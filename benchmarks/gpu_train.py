"""GPU training throughput and MFU of the pipeline's own Trainer, one command (under 6 minutes on one H100).

Model: xlm-roberta-base-shaped from config (hidden 768, 12 layers, 12 heads, intermediate 3072,
vocab 250002, random weights: throughput does not depend on them). Features: windows with the
lengths of real UQA train windows (`uqa_window_lengths.json`, made from ../shared with
`--write-lengths`; token ids are random, which costs the same), so the run needs neither ../shared
nor `datasets` — the device image has torch and transformers only.

Every setting is `uqa.model.trainer.build_trainer` — the Trainer `dvc repro` and the flow run —
with one thing changed, each in a fresh process (accelerate's state is per process):
  padding      seed (every window padded to 512, random batches, default_data_collator)
               | ours (per-batch padding to a multiple of 8, length-grouped batches)
  precision    fp32 | bf16
  microbatch   the recipe's 8 x 8 accumulation | 64 x 1 (the same 64 features per optimizer step)
  compile      Trainer(torch_compile=True) off | on
Reported: features/s, non-pad tokens/s, MFU = 6 x non-embedding params x non-pad tokens/s / peak
dense bf16 FLOP/s of the card (attention FLOPs not counted; the peak is looked up from the device
name, `--peak-tflops` overrides), and the seed recipe (6 epochs over UQA's 83,545 answerable train
windows, evaluation not included) projected in minutes for the pipeline's default and the fastest
setting. Settings run most important first; a setting that would overrun `--budget-s` is skipped
and says so. Results are written after every setting (to results/gpu_train.json and `--out DIR`).

    python benchmarks/gpu_train.py [--out DIR] [--steps 8] [--budget-s 330]
    python benchmarks/gpu_train.py --smoke          # CPU, tiny model: checks the script (tests use it)
    python benchmarks/gpu_train.py --write-lengths  # needs ../shared: refreshes uqa_window_lengths.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, CountingCollator, answerable_train_sample, write_result

CONFIG = {"model_type": "xlm-roberta", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
          "intermediate_size": 3072, "max_position_embeddings": 514, "type_vocab_size": 1}
VOCAB = 250002
SMOKE_CONFIG = {**CONFIG, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                "intermediate_size": 64}
SMOKE_VOCAB = 1000
UQA_TRAIN_FEATURES = 83_545  # answerable train windows at max_seq_length 512, stride 128 (reports/tokenize.json)
LENGTHS_FILE = Path(__file__).with_name("uqa_window_lengths.json")
MAX_LENGTH = 512

# dense bf16 peak per GPU, TFLOP/s (NVIDIA datasheets, without sparsity)
PEAK_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("H800", 989.4),
               ("A100", 312.0), ("L40S", 362.0), ("A10G", 70.0)]

# most important first: a budget cut drops the tail
SETTINGS = [
    {"name": "pipeline default", "padding": "ours", "precision": "bf16", "microbatch": 8, "accumulation": 8},
    {"name": "seed padding", "padding": "seed", "precision": "bf16", "microbatch": 8, "accumulation": 8},
    {"name": "pipeline, fp32", "padding": "ours", "precision": "fp32", "microbatch": 8, "accumulation": 8},
    {"name": "seed padding, fp32", "padding": "seed", "precision": "fp32", "microbatch": 8, "accumulation": 8},
    {"name": "pipeline, microbatch 64", "padding": "ours", "precision": "bf16", "microbatch": 64, "accumulation": 1},
    {"name": "pipeline, compiled", "padding": "ours", "precision": "bf16", "microbatch": 8, "accumulation": 8,
     "compile": True},
    {"name": "pipeline, microbatch 64, compiled", "padding": "ours", "precision": "bf16", "microbatch": 64,
     "accumulation": 1, "compile": True},
]
SECONDS_NEEDED = {False: 25, True: 150}  # a setting's rough cost, to skip one the budget cannot hold


def write_lengths(shared: Path, n_examples: int = 8000, path: Path = LENGTHS_FILE) -> None:
    """Lengths of the windows of n_examples random answerable UQA train questions (Urdu tokenizer)."""
    _, windows, _ = answerable_train_sample(shared, n_examples, MAX_LENGTH, 128)
    lengths = windows.lengths.astype(int).tolist()
    path.write_text(json.dumps({
        "source": f"{n_examples} random answerable rows of UQA train (random_state 0), urdu-xlmr-32k tokenizer, "
                  f"max_seq_length {MAX_LENGTH}, stride 128; written by benchmarks/gpu_train.py --write-lengths",
        "mean": float(np.mean(lengths)), "lengths": lengths}) + "\n")
    print(f"{path}: {len(lengths)} windows, mean length {np.mean(lengths):.1f}")


def synthetic_tokenizer(vocab_size: int):
    """A fast tokenizer with `vocab_size` entries and XLM-R's special ids (the collator needs pad and
    the model's embedding table takes its size from the tokenizer)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    vocab.update({f"t{i}": i for i in range(len(specials), vocab_size)})
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                   bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
                                   unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                   model_max_length=MAX_LENGTH)


def make_features(lengths: list[int], vocab_size: int, seed_padding: bool, pad_id: int) -> list[dict]:
    rng = np.random.default_rng(0)
    feats = []
    for n in lengths:
        ids = rng.integers(5, vocab_size, size=n)
        start = int(rng.integers(1, n - 1))
        feat = {"start_positions": start, "end_positions": min(n - 2, start + int(rng.integers(0, 8)))}
        if seed_padding:  # the seed tokenizes with padding="max_length"
            feat["input_ids"] = np.concatenate([ids, np.full(MAX_LENGTH - n, pad_id)]).tolist()
            feat["attention_mask"] = [1] * n + [0] * (MAX_LENGTH - n)
        else:
            feat["input_ids"] = ids.tolist()
        feats.append(feat)
    return feats


def run_setting(setting: dict, steps: int, warmup: int, smoke: bool, peak_tflops: float | None) -> dict:
    """One setting, in this process: build the pipeline's Trainer, train warmup + steps optimizer steps."""
    import torch
    from transformers import TrainerCallback, default_data_collator, set_seed

    from uqa.model.modeling import build_model
    from uqa.model.trainer import build_trainer
    from uqa.params.validation import params_from_dict

    config, vocab = (SMOKE_CONFIG, SMOKE_VOCAB) if smoke else (CONFIG, VOCAB)
    per_step = setting["microbatch"] * setting["accumulation"]  # features per optimizer step
    lengths = json.loads(LENGTHS_FILE.read_text())["lengths"]
    # all of them, though only (warmup + steps) x 64 are trained on: the length-grouped sampler sorts
    # megabatches of up to 50 x 64 features, and a smaller pool would leave more padding than a real run
    lengths = [min(n, MAX_LENGTH) for n in lengths]
    if smoke:
        lengths = lengths[: per_step * (warmup + steps + 2)]
    seed_padding = setting["padding"] == "seed"
    params = params_from_dict({
        "model": {"init": "scratch", "config": config},
        "train": {"precision": setting["precision"], "train_batch_size": setting["microbatch"],
                  "gradient_accumulation_steps": setting["accumulation"], "max_steps": warmup + steps,
                  "group_by_length": not seed_padding, "torch_compile": bool(setting.get("compile"))},
    })
    tokenizer = synthetic_tokenizer(vocab)
    set_seed(params.train.seed)
    model = build_model(params.model, tokenizer, params.train.attn_implementation)
    non_embedding = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
    features = make_features(lengths, vocab, seed_padding, tokenizer.pad_token_id)
    cuda = torch.cuda.is_available() and not smoke
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            sync()
            times.append(time.perf_counter())

    with tempfile.TemporaryDirectory(prefix="gpu-train-") as tmp:
        overrides = dict(save_strategy="no", eval_strategy="no", load_best_model_at_end=False)
        if smoke:
            overrides["use_cpu"] = True
        trainer, info = build_trainer(params, model, tokenizer, features, lengths, Path(tmp), callbacks=[Clock()],
                                      **overrides)
        trainer.data_collator = CountingCollator(default_data_collator if seed_padding else trainer.data_collator)
        started = time.perf_counter()
        trainer.train()
        total_s = time.perf_counter() - started
    microbatches = trainer.data_collator.batches[warmup * setting["accumulation"]:
                                                 (warmup + steps) * setting["accumulation"]]
    elapsed = times[-1] - times[warmup - 1]
    feats = sum(b[0] for b in microbatches)
    real = sum(b[1] for b in microbatches)
    padded = sum(b[2] for b in microbatches)
    peak = (peak_tflops or 1.0) * 1e12
    return {**setting, "precision_used": info["precision"], "features_per_s": feats / elapsed,
            "tokens_per_s": real / elapsed, "padding_fraction": 1 - real / padded,
            "mfu": 6 * non_embedding * real / elapsed / peak,
            "mfu_counting_padding": 6 * non_embedding * padded / elapsed / peak,
            "optimizer_steps_timed": steps, "seconds_timed": elapsed, "seconds_incl_warmup_and_compile": total_s,
            "non_embedding_params": non_embedding,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def peak_for(device_name: str, override: float | None) -> tuple[float, str]:
    if override:
        return override, "--peak-tflops"
    for key, tflops in PEAK_TFLOPS:
        if key in device_name:
            return tflops, f"datasheet dense bf16 for {key}"
    raise SystemExit(f"no peak known for {device_name!r}: pass --peak-tflops")


def child(setting: dict, args, peak: float, timeout_s: float) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(setting), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--peak-tflops", str(peak)] + (["--smoke"] if args.smoke else [])
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {**setting, "error": f"stopped after {timeout_s:.0f} s (time budget)"}
    if r.returncode != 0:
        tail = r.stderr.strip().splitlines()[-3:]
        oom = "OutOfMemoryError" in r.stderr or "out of memory" in r.stderr
        return {**setting, "error": "out of memory" if oom else " | ".join(tail)[-600:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def summarize(results: list[dict], device: str, peak: float, peak_source: str) -> dict:
    ok = [r for r in results if "error" not in r and "skipped" not in r]
    default = next((r for r in ok if r["name"] == "pipeline default"), None)
    seed = next((r for r in ok if r["name"] == "seed padding"), None)
    best = max(ok, key=lambda r: r["features_per_s"], default=None)

    def minutes(r):
        return round(6 * UQA_TRAIN_FEATURES / r["features_per_s"] / 60, 2) if r else None

    return {"device": device, "peak_tflops_used": peak, "peak_source": peak_source,
            "projected_seed_recipe_minutes": {"pipeline default": minutes(default),
                                              "seed padding": minutes(seed),
                                              f"fastest ({best['name']})" if best else "fastest": minutes(best)},
            "pipeline_vs_seed_padding": default["features_per_s"] / seed["features_per_s"] if default and seed
            else None,
            "pipeline_default_mfu": default["mfu"] if default else None}


def print_table(results: list[dict]) -> None:
    print("| setting | precision | microbatch x accumulation | compile | features/s | non-pad tokens/s | padding "
          "| MFU | peak GiB |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        head = f"| {r['name']} | {r['precision']} | {r['microbatch']} x {r['accumulation']} | " \
               f"{'on' if r.get('compile') else 'off'} |"
        if "error" in r or "skipped" in r:
            print(f"{head} {r.get('error') or r.get('skipped')} | | | | |")
            continue
        mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "-"
        print(f"{head} {r['features_per_s']:,.1f} | {r['tokens_per_s']:,.0f} | {100 * r['padding_fraction']:.1f}% "
              f"| {100 * r['mfu']:.1f}% | {mem} |")


def main() -> None:
    started = time.perf_counter()
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps timed per setting (64 features each)")
    parser.add_argument("--warmup", type=int, default=3, help="optimizer steps before the clock starts")
    parser.add_argument("--budget-s", type=float, default=330.0, help="stop starting settings after this long")
    parser.add_argument("--peak-tflops", type=float)
    parser.add_argument("--out", help="also write gpu_train.json here (a device run's $OUT)")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU, tiny model, no compile: checks the script runs (tests use it); measures nothing")
    parser.add_argument("--write-lengths", action="store_true")
    parser.add_argument("--shared", default=str(ROOT.parent / "shared"))
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.write_lengths:
        write_lengths(Path(args.shared))
        return
    if args.child:
        print(json.dumps(run_setting(json.loads(args.child), args.steps, args.warmup, args.smoke, args.peak_tflops),
                         default=float))
        return
    import torch

    if args.smoke:
        device, peak, peak_source = "cpu (smoke: measures nothing)", 1.0, "smoke"
        settings = [dict(s, microbatch=max(1, s["microbatch"] // 4), accumulation=max(1, s["accumulation"] // 4))
                    for s in SETTINGS if not s.get("compile")]
    elif not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark needs a GPU (--smoke checks it on CPU)")
    else:
        device = torch.cuda.get_device_name(0)
        peak, peak_source = peak_for(device, args.peak_tflops)
        settings = SETTINGS
    lengths_source = json.loads(LENGTHS_FILE.read_text())["source"]
    results: list[dict] = []
    for setting in settings:
        left = args.budget_s - (time.perf_counter() - started)
        if left < SECONDS_NEEDED[bool(setting.get("compile"))] and not args.smoke:
            results.append({**setting, "skipped": f"skipped: {left:.0f} s of the time budget left"})
        else:
            results.append(child(setting, args, peak, max(left, 60.0)))
        print(json.dumps({k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in results[-1].items()}),
              flush=True)
        payload = {"results": results, "summary": summarize(results, device, peak, peak_source),
                   "steps": args.steps, "warmup": args.warmup,
                   "lengths": lengths_source}
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "gpu_train.json").write_text(json.dumps(payload, indent=2, default=float) + "\n")
        if not args.smoke:
            write_result("gpu_train", payload)
    print_table(results)
    print(json.dumps(payload["summary"], indent=2, default=float))
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
