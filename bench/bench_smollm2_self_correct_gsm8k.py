"""Self-correction on GSM8K with SmolLM2-135M-Instruct as the generator (issue 13, item 4c).

Data: ``<shared>/gsm8k/example_model_solutions.jsonl`` (1,319 test questions, each with the ground truth
and four graded GPT-3 solutions), questions split (seeded) into train and held-out parts, as in
``bench/bench_self_correct_gsm8k.py``, whose pool builder this reuses.

1. **Corrector** (Welleck et al. 2022, Pairing + Learning, no Exploration): SmolLM2 + LoRA trained with
   the corrector cross-entropy on value-improving pairs (a graded GPT-3 solution that is wrong -> the
   ground truth), with the feedback ``f`` of ``FinalAnswerValue`` in its input.
2. **Generator**: the same SmolLM2 with its adapters off (the instruct model as it comes) writes ``y0`` for
   each held-out question, greedy (``Q: {question}\\nA:``, raw prompts).
3. **One correction** of each ``y0`` by the corrector, greedy. Reported: ``value@0`` and ``value@1`` (share
   of right final answers), and the counts of fixed (wrong -> right) and broken (right -> wrong) solutions.

    python bench/bench_smollm2_self_correct_gsm8k.py --json bench/results/smollm2_self_correct_cpu.json
    python bench/bench_smollm2_self_correct_gsm8k.py --trainer gpu --json bench/results/smollm2_self_correct_gpu.json
    python bench/bench_smollm2_self_correct_gsm8k.py --smoke
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from contextlib import nullcontext

from _cli import ROOT, finish
from _smollm2 import SHARED, add_size_args, model_config, seeds, size

if str(ROOT) not in sys.path:  # run as a script: this checkout's feedback_lm/ and plugins/
    sys.path.insert(0, str(ROOT))

import torch
from bench_self_correct_gsm8k import build_pool

from feedback_lm.data.gsm8k import load_graded_solutions, prompt_for
from feedback_lm.policy import Policy
from feedback_lm.values import FinalAnswerValue, judge
from plugins.self_correct import (
    correct_iteratively,
    correction_metrics,
    corrector_loss,
    corrector_prompt,
    improving_pairs,
    sample_pairs,
    token_similarity,
)


def run_seed(seed: int, args) -> dict:
    steps, batch, n_eval, new_tokens = size(args, cpu=(40, 4, 50, 128), gpu=(600, 16, 400, 256),
                                            smoke=(2, 2, 4, 16), names=("steps", "batch", "n_eval", "new_tokens"))
    device = "cuda" if args.trainer == "gpu" else "cpu"
    torch.manual_seed(seed)
    value = FinalAnswerValue()
    solutions = load_graded_solutions(args.data)
    questions = sorted({s.question for s in solutions})
    random.Random(seed).shuffle(questions)
    held_out = questions[:n_eval]
    train = [s for s in solutions if s.question not in set(held_out)]
    pool = build_pool(train, args.train_generator, value)
    pairs = improving_pairs([e["prompt"] for e in pool], [e["value"] for e in pool])
    gpu = ["model.attention=sdpa"] if device == "cuda" else []  # eager is the CPU choice
    policy = Policy.from_config(model_config("model.max_length=512", *gpu)).to(device)
    autocast = torch.autocast(device, dtype=torch.bfloat16)

    # 1. learning: corrector cross-entropy on sampled value-improving pairs
    hyp = torch.tensor([i for i, _ in pairs])
    improvement = torch.tensor([pool[j]["value"] - pool[i]["value"] for i, j in pairs])
    ids = lambda text: policy.tokenizer(text, add_special_tokens=False)["input_ids"]
    n_corr = Counter(i for i, _ in pairs)
    similarity = torch.tensor([token_similarity(ids(pool[i]["response"]), ids(pool[j]["response"]))
                               if n_corr[i] > 1 else 0.0 for i, j in pairs])
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=args.lr)
    gen = torch.Generator().manual_seed(seed)
    started, losses = time.perf_counter(), []
    policy.train()
    for step in range(steps):
        chosen = [pairs[i] for i in sample_pairs(hyp, improvement, similarity, 1.0, 1.0, batch, gen).tolist()]
        inputs = [corrector_prompt(pool[i]["prompt"], " " + pool[i]["response"].strip(), pool[i]["feedback"])
                  for i, _ in chosen]
        enc = policy.encode_batch(inputs, [" " + pool[j]["response"].strip() for _, j in chosen], device)
        with autocast:
            loss = corrector_loss(policy(**enc).logits, enc["response_ids"], enc["response_mask"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 25 == 0 or step == steps - 1:
            print(f"seed {seed} step {step}: loss {loss.item():.3f} ({time.perf_counter() - started:.0f}s)", flush=True)
    train_s = time.perf_counter() - started
    policy.eval()

    # 2. the generator (adapters off) answers the held-out questions; 3. one correction each
    rows = {s.question: s for s in solutions if s.question in set(held_out)}
    prompts = [prompt_for(q) for q in held_out]
    targets = [rows[q].answer for q in held_out]

    def generate(texts, adapters: bool) -> list[str]:
        out = []
        with autocast, (nullcontext() if adapters else policy.model.disable_adapter()):
            for c in range(0, len(texts), 16):
                out += policy.generate_text(texts[c:c + 16], max_new_tokens=new_tokens, do_sample=False)
        return [o.strip() for o in out]

    started = time.perf_counter()
    y0 = generate(prompts, adapters=False)
    v0, f0 = judge(value, prompts, y0, targets)

    def correct(idx, outs, fbs):
        return generate([corrector_prompt(prompts[i], " " + o, f) for i, o, f in zip(idx, outs, fbs)], adapters=True)

    def judge_idx(idx, outs):
        return judge(value, [prompts[i] for i in idx], outs, [targets[i] for i in idx])

    values, history = correct_iteratively(y0, v0, f0, correct, judge_idx, 1)
    m = correction_metrics(values, 1.0)
    n = len(prompts)
    result = {"seed": seed, "n": n, "pairs": len(pairs), "steps": steps, "train_s": round(train_s, 1),
              "eval_s": round(time.perf_counter() - started, 1), "value@0": m["value@0"], "value@1": m["value@1"],
              "fixed": round(m["fixed"] * n), "broken": round(m["broken"] * n),
              "loss_last10": sum(losses[-10:]) / max(1, len(losses[-10:])),
              "samples": [{"y0": history[0][i][-300:], "y1": history[1][i][-300:], "target": targets[i]}
                          for i in range(min(3, n))]}
    print({k: v for k, v in result.items() if k != "samples"}, flush=True)
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_size_args(p, "/tmp/bench_smollm2_self_correct")
    p.add_argument("--data", default=str(SHARED / "gsm8k" / "example_model_solutions.jsonl"))
    p.add_argument("--train-generator", default="6b_finetuning")
    p.add_argument("--lr", type=float, default=2e-4, help="[PROJECT] LoRA")
    args = p.parse_args(argv)
    started = time.perf_counter()
    runs = [run_seed(s, args) for s in seeds(args)]
    return finish({"what": "self-correction on GSM8K, SmolLM2-135M generator + LoRA corrector "
                           "(bench_smollm2_self_correct_gsm8k.py)", "trainer": args.trainer, "smoke": args.smoke,
                   "runs": runs}, started, args.json, None, lambda runs, path: None)


if __name__ == "__main__":
    main()
