"""Reward-model accuracy sweep on simulated labels (experiments behind bench/README.md's RM accuracy section).

Collects comparisons from an SFT model (``feedback_lm.collect``), holds out a prompt-disjoint set, then
trains ``plugins.reward_model.RewardModel`` with a plain loop (the plugin's own ``_batch_rewards``,
``_loss``, AdamW and schedule) for each named configuration and prints held-out accuracy by kind of
pair (correct vs wrong answer, wrong vs wrong by graded credit), also on the held-out prompts whose
word set never occurs in training.

    python bench/bench_rm_sweep.py --sft outputs/<run>/model --work /tmp/rm_work/sweep \
        --train-prompts 4000 --val-prompts 1500 --configs base,mean --device cuda
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from feedback_lm.collect import collect
from feedback_lm.data.comparisons import Comparison, load_comparisons, write_comparisons
from feedback_lm.optim import build_adamw, build_scheduler
from plugins.reward_model import RewardModel, ranking_pairs

DIFFICULTY = {"min_words": 2, "max_words": 3, "vocab_size": 30}

# name -> overrides of BASE (RewardModel arguments and training settings)
BASE = {"lr": 3e-4, "schedule": "linear", "warmup_steps": 10, "pooling": "last", "init": "sft", "epochs": 2,
        "batch": 16, "overrides": {}, "max_grad_norm": 1.0, "weight_decay": 0.0}
BIG = {"d_model": 256, "d_ff": 1024, "num_layers": 4, "num_decoder_layers": 4}
CONFIGS = {
    "base": {},
    "mean": {"pooling": "mean"},
    "ep6_lr1e-3": {"lr": 1e-3, "epochs": 6},
    "mean_lr1e-3_ep6": {"pooling": "mean", "lr": 1e-3, "epochs": 6},
    "mean_ep6": {"pooling": "mean", "epochs": 6},
    "mean_lr1e-4_ep6": {"pooling": "mean", "lr": 1e-4, "epochs": 6},
    "big_scratch_mean": {"init": "scratch", "pooling": "mean", "lr": 1e-3, "epochs": 6, "overrides": BIG},
    # not run yet (no device time left): the last-token control at the best LR, and less data
    "ep6_lr1e-4": {"lr": 1e-4, "epochs": 6},
    "mean_lr1e-4_ep6_rows2400": {"pooling": "mean", "lr": 1e-4, "epochs": 6, "rows": 2400},
    # one epoch at lr 1e-4 (with --max-train-rows 2400: the CPU-sized control of last vs mean)
    "ep1_lr1e-4": {"lr": 1e-4, "epochs": 1},
    "mean_ep1_lr1e-4": {"pooling": "mean", "lr": 1e-4, "epochs": 1},
    # diagnostic only (not in the plugin): reward = head(h_last) + a * mean log p_LM(response), a trainable
    "lpfeat": {"lpfeat": True},
    "lpfeat_ep6": {"lpfeat": True, "epochs": 6},
}


def _add_lp_feature(rm: RewardModel) -> None:
    from feedback_lm import ops

    rm.lp_coef = torch.nn.Parameter(torch.tensor(1.0))

    def raw_rewards(prompts, responses):
        enc = rm.policy.encode_batch(prompts, responses, rm.device)
        out = rm.policy(**enc, output_hidden=True)
        mask = enc["response_mask"]
        lp = ops.gather_logprobs(out.logits, enc["response_ids"]) * mask
        return rm.head(out.last_hidden) + rm.lp_coef * lp.sum(-1) / mask.sum(-1)

    rm.raw_rewards = raw_rewards


def word_set(prompt: str) -> frozenset:
    return frozenset(prompt.split("List: ")[1].split("\n")[0].split())


def prepare(args) -> tuple[list[Comparison], list[Comparison], set]:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tr_path, va_path = work / f"train_{args.train_prompts}.jsonl", work / f"val_{args.val_prompts}.jsonl"
    for path, n, seed in ((tr_path, args.train_prompts, 1), (va_path, args.val_prompts, 0)):
        if not path.is_file():
            t = time.perf_counter()
            s = collect(args.sft, "word_sorting", path, difficulty=DIFFICULTY, num_prompts=n, k=args.k,
                        mode="rank", noise=args.noise, max_new_tokens=32, batch_size=args.collect_batch,
                        seed=seed, device=args.device, progress=False)
            print(f"collect {path.name}: {s} in {time.perf_counter() - t:.1f}s", flush=True)
    train = load_comparisons(tr_path)
    seen = {c.prompt for c in train}
    val_all = load_comparisons(va_path)
    val = [c for c in val_all if c.prompt not in seen]
    write_comparisons(work / "val_heldout.jsonl", val)
    print(f"train rows {len(train)}, held-out rows {len(val)} (dropped {len(val_all) - len(val)} whose prompt "
          f"is in train)", flush=True)
    return train, val, {word_set(c.prompt) for c in train}


@torch.no_grad()
def evaluate(rm: RewardModel, val: list[Comparison], seen_sets: set, bs: int = 128) -> dict:
    rm.eval()
    counts = {k: [0, 0] for k in ("cw", "ww", "all", "novel", "top1")}
    for i in range(0, len(val), bs):
        batch = val[i:i + bs]
        r = rm._batch_rewards(batch)
        for b, c in enumerate(batch):
            sc = c.meta["scores"]
            novel = word_set(c.prompt) not in seen_sets
            for w, lo in ranking_pairs(c.tiers):
                ok = int(r[b, w] > r[b, lo])
                kind = "cw" if sc[w] == 1.0 else "ww"
                for key in (kind, "all") + (("novel",) if novel else ()):
                    counts[key][0] += ok
                    counts[key][1] += 1
            counts["top1"][0] += int(int(r[b, : len(c.responses)].argmax()) in c.tiers[0])
            counts["top1"][1] += 1
    rm.train()
    return {k: (round(v[0] / v[1], 4) if v[1] else None) for k, v in counts.items()} | {
        "n_pairs": counts["all"][1], "n_cw": counts["cw"][1], "n_ww": counts["ww"][1], "n_novel": counts["novel"][1]}


def run_config(name: str, train, val, seen_sets, args) -> dict:
    cfg = {**BASE, **CONFIGS[name]}
    torch.manual_seed(args.seed)
    model = {"name": "tiny-t5", "preset": "tiny-t5", "tokenizer": "byte", "overrides": cfg["overrides"]}
    rm = RewardModel(model, init_from=args.sft if cfg["init"] == "sft" else None, lr=cfg["lr"],
                     schedule=cfg["schedule"], warmup_steps=cfg["warmup_steps"], pooling=cfg["pooling"],
                     min_lr_ratio=cfg.get("min_lr_ratio", 0.0))
    rm.configure_model()
    if cfg.get("lpfeat"):
        _add_lp_feature(rm)
    rm.to(args.device)
    if cfg.get("rows"):
        train = train[: cfg["rows"]]
    steps_per_epoch = len(train) // cfg["batch"]
    total = steps_per_epoch * cfg["epochs"]
    opt = build_adamw(rm.parameters(), cfg["lr"], cfg["weight_decay"], eps=1e-5)
    sched = build_scheduler(opt, total, cfg["schedule"], cfg["warmup_steps"], cfg.get("min_lr_ratio", 0.0))
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    hist = [{"epoch": 0, **evaluate(rm, val, seen_sets)}]
    for ep in range(cfg["epochs"]):
        order = list(range(len(train)))
        rng.shuffle(order)
        losses = []
        for s in range(steps_per_epoch):
            batch = [train[j] for j in order[s * cfg["batch"]:(s + 1) * cfg["batch"]]]
            loss = rm._loss(batch, rm._batch_rewards(batch))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg["max_grad_norm"]:
                torch.nn.utils.clip_grad_norm_(rm.parameters(), cfg["max_grad_norm"])
            opt.step()
            sched.step()
            losses.append(loss.item())
        hist.append({"epoch": ep + 1, "train_loss": round(sum(losses) / len(losses), 4),
                     **evaluate(rm, val, seen_sets)})
        print(name, json.dumps(hist[-1]), f"{time.perf_counter() - t0:.0f}s", flush=True)
    return {"name": name, "cfg": cfg, "steps": total, "seconds": round(time.perf_counter() - t0, 1), "hist": hist}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sft", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--train-prompts", type=int, default=4000)
    p.add_argument("--val-prompts", type=int, default=1500)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--noise", type=float, default=0.0)
    p.add_argument("--collect-batch", type=int, default=32)
    p.add_argument("--configs", default="base")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    p.add_argument("--max-train-rows", type=int, default=0)
    args = p.parse_args()
    train, val, seen = prepare(args)
    if args.max_train_rows:
        train = train[: args.max_train_rows]
    results = []
    for name in args.configs.split(","):
        results.append(run_config(name, train, val, seen, args))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    for r in results:
        best = max(r["hist"], key=lambda h: h["all"])
        last = r["hist"][-1]
        print(f"{r['name']:>18}: last all={last['all']} cw={last['cw']} ww={last['ww']} novel={last['novel']} "
              f"top1={last['top1']} | best epoch {best['epoch']} all={best['all']} | {r['seconds']}s")


if __name__ == "__main__":
    main()
