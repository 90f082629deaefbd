"""Training throughput: the seed's collation (every window padded to max_seq_length) vs the pipeline's.

Same XLM-R-shaped model (hidden 256, 4 layers, 4 heads, intermediate 1024, vocab 32000, random
weights, seed 42), same real UQA train features (Urdu tokenizer), same Trainer, CPU:
  seed     default_data_collator on features padded to 512, random batches
  padded   per-batch padding to a multiple of 8 (DataCollatorWithPadding), random batches
  ours     the pipeline's make_trainer: per-batch padding to 8 + length-grouped batches + SDPA
Features/s and non-pad tokens/s are measured over steps after a warm-up (the collator counts the
tokens of the batches it builds). The loss of grouped vs random batches over the same steps is
reported too: grouping must not change the curve materially.

    python benchmarks/train_throughput.py [--shared ../shared] [--repeats 3] [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import CountingCollator, answerable_train_sample, median, shared_dir, table, write_result

CONFIG = {"model_type": "xlm-roberta", "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
          "intermediate_size": 1024, "max_position_embeddings": 514, "type_vocab_size": 1}
BATCH = 8
WARMUP = 4


def prepare(shared: Path, work: Path, n_examples: int) -> dict:
    """Real UQA train features in the pipeline's layout (data/tokenized/...)."""
    import datasets

    from uqa.text.passes import features_table

    tok, windows, labels = answerable_train_sample(shared, n_examples)
    table_ = features_table(windows, labels)
    out = work / "data" / "tokenized"
    datasets.Dataset(table_).save_to_disk(str(out / "train"))
    datasets.Dataset(table_.slice(0, 64)).save_to_disk(str(out / "validation"))
    tok.save_pretrained(str(out / "tokenizer"))
    return {"features": windows.n_windows, "mean_length": float(windows.lengths.mean())}


def run_side(side: str, work: Path, steps: int) -> dict:
    import torch
    from transformers import TrainerCallback, default_data_collator

    from uqa.model.trainer import make_trainer
    from uqa.params.validation import params_from_dict
    from uqa.workspace.dvc_ops import working_dir

    torch.manual_seed(0)
    params = params_from_dict({
        "model": {"init": "scratch", "config": CONFIG},
        "train": {"train_batch_size": BATCH, "gradient_accumulation_steps": 1, "learning_rate": 1e-4,
                  "max_steps": steps, "logging_steps": 1, "group_by_length": side == "ours",
                  "attn_implementation": "sdpa" if side == "ours" else None},
    })
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter())

    with working_dir(work):
        trainer, _ = make_trainer(params, work / f"ck-{side}", callbacks=[Clock()], save_strategy="no",
                                  eval_strategy="no", load_best_model_at_end=False)
        if side == "seed":
            # the seed: every window padded to max_seq_length (512) when tokenized, default_data_collator
            import datasets

            ds = trainer.train_dataset
            pad = trainer.processing_class.pad_token_id

            def pad_to_512(batch):
                ids = [x + [pad] * (512 - len(x)) for x in batch["input_ids"]]
                mask = [[1] * len(x) + [0] * (512 - len(x)) for x in batch["input_ids"]]
                return {"input_ids": ids, "attention_mask": mask}

            trainer.train_dataset = ds.map(pad_to_512, batched=True, keep_in_memory=True)
            assert isinstance(trainer.train_dataset, datasets.Dataset)
            trainer.data_collator = CountingCollator(default_data_collator)
        else:
            trainer.data_collator = CountingCollator(trainer.data_collator)
        trainer.train()
    counted = trainer.data_collator.batches[WARMUP : len(times)]
    elapsed = times[-1] - times[WARMUP - 1]
    features = sum(b[0] for b in counted)
    real = sum(b[1] for b in counted)
    padded = sum(b[2] for b in counted)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"features_per_s": features / elapsed, "tokens_per_s": real / elapsed, "padding_fraction": 1 - real / padded,
            "seconds": elapsed, "steps_timed": len(counted), "losses": losses,
            "attn_implementation": trainer.model.config._attn_implementation}


def _child(side: str, work: Path, steps: int) -> dict:
    import subprocess

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    r = subprocess.run([sys.executable, __file__, "--child", side, "--work", str(work), "--steps", str(steps)],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{side} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def loss_curves(shared: Path, steps: int, examples: int) -> None:
    """Does grouping batches by length change the loss curve? Same model, data and seed."""
    with tempfile.TemporaryDirectory(prefix="trainbench-") as tmp:
        prepare(shared, Path(tmp), examples)
        runs = {side: _child(side, Path(tmp), steps)["losses"] for side in ("padded", "ours")}
    rows = []
    for a in range(0, steps, 50):
        rows.append([f"{a + 1}-{min(a + 50, steps)}", float(np.mean(runs["padded"][a:a + 50])),
                     float(np.mean(runs["ours"][a:a + 50]))])
    print(table(["steps", "random batches: mean loss", "length-grouped: mean loss"], rows))
    write_result("train_loss_curves", {"steps": steps, "losses": runs, "table": rows})


def compute_bound(shared: Path, steps: int, examples: int, repeats: int) -> None:
    """What the model's arithmetic alone allows: forward + backward + clipping + AdamW of exactly the
    batches each side trains on (the pipeline's sampler and collator, or 8 x 512), no Trainer around
    it; plus the attention kernel with and without dropout (on CPU, SDPA's fused kernel takes no
    dropout, so training falls back to the unfused math kernel)."""
    import torch
    import torch.nn.functional as F

    from uqa.model.trainer import make_trainer
    from uqa.params.validation import params_from_dict
    from uqa.workspace.dvc_ops import working_dir

    with tempfile.TemporaryDirectory(prefix="trainbench-") as tmp:
        work = Path(tmp)
        prepare(shared, work, examples)
        params = params_from_dict({"model": {"init": "scratch", "config": CONFIG},
                                   "train": {"train_batch_size": BATCH, "gradient_accumulation_steps": 1}})
        with working_dir(work):
            trainer, _ = make_trainer(params, work / "ck", save_strategy="no", eval_strategy="no",
                                      load_best_model_at_end=False)
        loader = iter(trainer.get_train_dataloader())
        ours = [next(loader) for _ in range(WARMUP + steps)][WARMUP:]
        seed = []  # the same windows as the seed holds them: padded to 512, with the padding masked
        for b in ours:
            ids = torch.full((BATCH, 512), trainer.processing_class.pad_token_id, dtype=b["input_ids"].dtype)
            ids[:, : b["input_ids"].shape[1]] = b["input_ids"]
            mask = torch.zeros((BATCH, 512), dtype=b["attention_mask"].dtype)
            mask[:, : b["attention_mask"].shape[1]] = b["attention_mask"]
            seed.append({**b, "input_ids": ids, "attention_mask": mask})
        model = trainer.model
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

        def run(batches) -> float:
            for b in batches[:2]:  # warm-up
                model(**b).loss.backward()
                opt.zero_grad()
            start = time.perf_counter()
            for b in batches:
                model(**b).loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad()
            return len(batches) * BATCH / (time.perf_counter() - start)

        rates: dict[str, list[float]] = {"seed": [], "ours": []}
        for _ in range(repeats):
            rates["seed"].append(run(seed))
            rates["ours"].append(run(ours))
    mean_len = float(np.mean([b["input_ids"].shape[1] for b in ours]))
    q = torch.randn(BATCH, CONFIG["num_attention_heads"], round(mean_len), CONFIG["hidden_size"] // 4,
                    requires_grad=True)

    def sdpa_ms(dropout: float) -> float:
        times_ = []
        for _ in range(7):
            start = time.perf_counter()
            F.scaled_dot_product_attention(q, q, q, dropout_p=dropout).sum().backward()
            times_.append(time.perf_counter() - start)
        return 1000 * median(times_)

    kernel = {"dropout 0.0": sdpa_ms(0.0), "dropout 0.1": sdpa_ms(0.1)}
    med = {side: median(r) for side, r in rates.items()}
    rows = [["seed: 8 x 512", med["seed"], 1.0], [f"ours: the sampler's batches (mean width {mean_len:.0f})",
                                                  med["ours"], med["ours"] / med["seed"]]]
    print(table(["batches (no Trainer)", "features/s", "vs seed"], rows))
    print(f"attention forward+backward, batch {BATCH} x {round(mean_len)} tokens, one layer: "
          + ", ".join(f"{k}: {v:.1f} ms" for k, v in kernel.items()))
    write_result("train_compute_bound", {"config": CONFIG, "batch_size": BATCH, "steps": steps, "rates": rates,
                                         "medians": med, "ratio": med["ours"] / med["seed"],
                                         "mean_batch_width": mean_len, "sdpa_fwd_bwd_ms": kernel})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--examples", type=int, default=4000)
    parser.add_argument("--loss-curves", type=int, default=0, metavar="STEPS",
                        help="instead: loss of random vs length-grouped batches over STEPS steps")
    parser.add_argument("--bound", action="store_true",
                        help="instead: the ratio the model's arithmetic allows (same batches, no Trainer)")
    parser.add_argument("--child")
    parser.add_argument("--work")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_side(args.child, Path(args.work), args.steps)))
        return
    shared = shared_dir(args.shared)
    if args.bound:
        compute_bound(shared, args.steps, args.examples, args.repeats)
        return
    if args.loss_curves:
        loss_curves(shared, args.loss_curves, args.examples)
        return
    with tempfile.TemporaryDirectory(prefix="trainbench-") as tmp:
        work = Path(tmp)
        data = prepare(shared, work, args.examples)
        runs: dict[str, list[dict]] = {s: [] for s in ("seed", "padded", "ours")}
        for _ in range(args.repeats):
            for side in runs:  # each side in a fresh process, interleaved
                runs[side].append(_child(side, work, args.steps))
                print(f"{side}: {runs[side][-1]['features_per_s']:.1f} features/s", file=sys.stderr)
    med = {s: {k: median([r[k] for r in rs]) for k in ("features_per_s", "tokens_per_s", "padding_fraction")}
           for s, rs in runs.items()}
    seed = med["seed"]["features_per_s"]
    rows = [[s, m["features_per_s"], m["tokens_per_s"], f"{100 * m['padding_fraction']:.1f}%",
             f"{m['features_per_s'] / seed:.2f}x"] for s, m in med.items()]
    print(table(["collation", "features/s", "non-pad tokens/s", "padding", "vs seed"], rows))
    random_loss = np.mean([np.mean(r["losses"][-10:]) for r in runs["padded"]])
    grouped_loss = np.mean([np.mean(r["losses"][-10:]) for r in runs["ours"]])
    print(f"mean loss of the last 10 of {args.steps} steps: random batches {random_loss:.4f}, "
          f"length-grouped {grouped_loss:.4f}")
    write_result("train_throughput", {"config": CONFIG, "batch_size": BATCH, "steps": args.steps, "warmup": WARMUP,
                                      "data": data, "runs": runs, "medians": med,
                                      "speedup_vs_seed": med["ours"]["features_per_s"] / seed,
                                      "loss_last10_random": random_loss, "loss_last10_grouped": grouped_loss})


if __name__ == "__main__":
    main()
