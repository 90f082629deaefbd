"""GPU training throughput and MFU: xlm-roberta-base-shaped model on real UQA features, one command.

Random weights (throughput does not depend on them), the real UQA train features (Urdu tokenizer
from ../shared, or synthetic lengths with --synthetic), a fixed number of optimizer steps per
setting. Settings: {fp32, bf16} x {seed padding (all windows at 512), ours (per-batch padding to 8,
length-grouped)} x torch.compile {off, on} for bf16+ours. Reports features/s, non-pad tokens/s and
MFU = 6 x non-embedding params x non-pad tokens / time / peak bf16 dense FLOP/s of the card
(H100 SXM: 989.4e12; H200: 989.4e12 — same compute; override with --peak-tflops), and projects the
seed recipe (6 epochs over UQA's answerable train questions) for the fastest setting.
Meant to finish in under 6 minutes on one H100 (`--steps` trades precision for time).

    python benchmarks/gpu_train.py [--shared ../shared] [--steps 60] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import ROOT, write_result

CONFIG = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
          "vocab_size": 250002, "max_position_embeddings": 514, "type_vocab_size": 1, "pad_token_id": 1}
UQA_TRAIN_FEATURES = 83_545  # answerable train windows at max_seq_length 512, stride 128 (reports/tokenize.json)


def features(shared: Path | None, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    if shared is None:
        lengths = np.clip(rng.normal(210, 90, n), 40, 512).astype(int)
        return [rng.integers(5, 32000, size=k) for k in lengths]
    import pandas as pd

    from uqa.features import encode_windows
    from uqa.tokenizer import load_tokenizer

    df = pd.read_parquet(shared / "data/uqa/train.parquet")
    df = df[~df["is_impossible"]].sample(n=n, random_state=0)
    tok = load_tokenizer(str(shared / "models/urdu-xlmr-32k"))
    w = encode_windows(tok.backend_tokenizer, df["question"].str.strip().tolist(), df["context"].tolist(), 512, 128)
    return [w.input_ids[a:b].astype(np.int64) for a, b in zip(w.row_splits[:-1], w.row_splits[1:], strict=True)]


def batches(feats: list[np.ndarray], batch: int, grouped: bool, seed_padding: bool, rng: np.random.Generator):
    order = rng.permutation(len(feats))
    if grouped:  # megabatches of 50 batches sorted by length, as LengthGroupedSampler does
        mega = batch * 50
        order = np.concatenate([sorted(order[i:i + mega], key=lambda j: -len(feats[j]))
                                for i in range(0, len(order), mega)])
    out = []
    for i in range(0, len(order) - batch + 1, batch):
        rows = [feats[j] for j in order[i:i + batch]]
        width = 512 if seed_padding else int(np.ceil(max(len(r) for r in rows) / 8) * 8)
        ids = np.ones((batch, width), dtype=np.int64)
        mask = np.zeros((batch, width), dtype=np.int64)
        for k, r in enumerate(rows):
            ids[k, :len(r)] = r
            mask[k, :len(r)] = 1
        out.append((ids, mask))
    return out


def run(setting: dict, feats, steps: int, batch: int, peak: float, device: str = "cuda",
        config: dict | None = None) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForQuestionAnswering

    torch.manual_seed(0)
    cfg = AutoConfig.for_model("xlm-roberta", **(config or CONFIG))
    model = AutoModelForQuestionAnswering.from_config(cfg, attn_implementation="sdpa").to(device)
    non_embedding = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01, fused=device == "cuda")
    fwd = torch.compile(model, dynamic=True) if setting["compile"] else model
    dtype = torch.bfloat16 if setting["precision"] == "bf16" else None
    rng = np.random.default_rng(0)
    data = batches(feats, batch, grouped=not setting["seed_padding"], seed_padding=setting["seed_padding"], rng=rng)
    warm = 5

    def step(ids, mask):
        ids_t = torch.from_numpy(ids).to(device, non_blocking=True)
        mask_t = torch.from_numpy(mask).to(device, non_blocking=True)
        target = torch.zeros(ids.shape[0], dtype=torch.long, device=device)
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            out = fwd(input_ids=ids_t, attention_mask=mask_t, start_positions=target, end_positions=target)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for ids, mask in data[:warm]:
        step(ids, mask)
    sync()
    start = time.perf_counter()
    real = 0
    for ids, mask in data[warm:warm + steps]:
        step(ids, mask)
        real += int(mask.sum())
    sync()
    elapsed = time.perf_counter() - start
    n = min(steps, len(data) - warm)
    tokens_per_s = real / elapsed
    return {**setting, "features_per_s": n * batch / elapsed, "tokens_per_s": tokens_per_s,
            "mfu": 6 * non_embedding * tokens_per_s / peak, "non_embedding_params": non_embedding,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared", default=str(ROOT.parent / "shared"))
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--peak-tflops", type=float, default=989.4)
    parser.add_argument("--smoke", action="store_true",
                        help="CPU, tiny model, 2 steps: checks the script runs (tests use it); measures nothing")
    args = parser.parse_args()
    import torch

    device, config, n_features = "cuda", CONFIG, 6000
    if args.smoke:
        device, n_features = "cpu", 64
        config = {**CONFIG, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                  "intermediate_size": 64, "vocab_size": 32000}
    elif not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark needs a GPU (--smoke checks it on CPU)")
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
    rng = np.random.default_rng(0)
    shared = None if args.synthetic else Path(args.shared)
    feats = features(shared, n_features, rng)
    peak = args.peak_tflops * 1e12
    settings = [
        {"precision": "fp32", "seed_padding": True, "compile": False},
        {"precision": "bf16", "seed_padding": True, "compile": False},
        {"precision": "fp32", "seed_padding": False, "compile": False},
        {"precision": "bf16", "seed_padding": False, "compile": False},
        {"precision": "bf16", "seed_padding": False, "compile": True},
    ]
    results = []
    if args.smoke:
        settings = [s for s in settings if not s["compile"]]
    for s in settings:
        r = run(s, feats, args.steps, args.batch, peak, device, config)
        results.append(r)
        print(json.dumps({k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
    best = max(results, key=lambda r: r["features_per_s"])
    epoch_s = UQA_TRAIN_FEATURES / best["features_per_s"]
    summary = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (smoke)",
               "peak_tflops_used": args.peak_tflops,
               "best": best, "projected_seed_recipe_minutes": 6 * epoch_s / 60}
    print(json.dumps(summary, indent=2, default=float))
    if not args.smoke:
        write_result("gpu_train", {"results": results, "summary": summary, "batch": args.batch, "steps": args.steps})


if __name__ == "__main__":
    main()
