"""CPU time of one SFT step with random vs length-grouped batches (``data.group_by_length``; docs/speed.md).

The embedded default's model (tiny-t5, bf16 autocast, fused AdamW, batch 32) on generated ``word_sorting``
at BBH length (2-20 words; ``--max-words 3`` for the embedded default's data), one torch thread; the two
kinds of batch alternate step by step, so load on the machine hits both alike. Batches are grouped as
``feedback_lm.data.datamodule.grouped_by_length`` does (groups of 50 batches sorted by length).

    python bench/bench_group_by_length.py [--steps 40] [--max-words 20]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch

from feedback_lm.data import tasks
from feedback_lm.data.datamodule import example_rows, grouped_by_length
from feedback_lm.models import ModelConfig
from feedback_lm.optim import build_adamw
from feedback_lm.policy import Policy
from plugins.sft import sft_loss


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=40, help="measured steps per kind (after 5 warm-up steps)")
    p.add_argument("--max-words", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    n = args.batch_size * 50 * 2
    rows = example_rows(tasks.generate("word_sorting", n, 0, min_words=2, max_words=args.max_words),
                        "Q: {input}\nA:")
    lengths = torch.tensor([len(r["prompt"]) + len(r["response"]) for r in rows])
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(n, generator=g)
    kinds = {"random": order, "grouped": grouped_by_length(order, lengths, args.batch_size, 50, g)}
    batches = {k: v.view(-1, args.batch_size) for k, v in kinds.items()}
    policy = Policy.from_config(ModelConfig.coerce({"preset": "tiny-t5", "tokenizer": "byte", "attention": "sdpa"}))
    opt = build_adamw(policy.parameters(), 1e-3, 0.0, (0.9, 0.999))

    def step(idx: torch.Tensor) -> float:
        chunk = [rows[i] for i in idx.tolist()]
        t = time.thread_time()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            enc = policy.encode_batch([r["prompt"] for r in chunk], [r["response"] for r in chunk])
            logits = policy(**enc).logits
        sft_loss(logits, enc["response_ids"], enc["response_mask"]).backward()
        opt.step()
        opt.zero_grad()
        return time.thread_time() - t

    times: dict[str, list[float]] = {k: [] for k in kinds}
    for i in range(5 + args.steps):
        for k in kinds:
            dt = step(batches[k][i])
            if i >= 5:
                times[k].append(dt)
    real = {k: float(lengths[b].sum() / (b.shape[1] * lengths[b].max(1).values.sum())) for k, b in batches.items()}
    out = {k: {"cpu_ms_median": 1000 * statistics.median(v), "real_positions": round(real[k], 3)} for k, v in times.items()}
    out["speedup"] = out["random"]["cpu_ms_median"] / out["grouped"]["cpu_ms_median"]
    for k in kinds:
        print(f"{k:>8}: {out[k]['cpu_ms_median']:.1f} CPU ms / step, ~{100 * out[k]['real_positions']:.0f} % of "
              "positions real")
    print(f"grouped is {out['speedup']:.2f}x cheaper per step")
    return out


if __name__ == "__main__":
    main()
