"""What a tiny corrector does on GSM8K's graded GPT-3 solutions (docs/algorithms.md §6; Welleck et al. 2022 §4.1, §4.3).

Data: ``<shared data>/gsm8k/example_model_solutions.jsonl``: 1,319 test questions, each with a ground
truth and four graded GPT-3 solutions. Questions are split (seeded) into train and held-out parts.

Training (the paper's Pairing + Learning on real generations, no Exploration): for every train
question the pool ``D_x`` holds the ``--train-generator``'s solution and the ground truth, each with
``v`` = 1 iff its final answer is right and feedback ``f`` from ``FinalAnswerValue`` (the first wrong
calculator step, or the wrong final answer). Pairs are strictly value-improving (wrong -> right) and are
drawn with the two-stage sampler of ``plugins.self_correct`` (v is binary, so α is irrelevant, docs/algorithms.md §6.5).
The corrector is a byte-level model built from a tiny preset (random init, no pretraining) trained with
the corrector cross-entropy.

Evaluation on the held-out questions: ``y0`` = a graded GPT-3 solution, then ``k`` greedy corrections;
``value@t`` with a fixed number of corrections and with oracle stopping (stop once v = 1, which uses
the gold answer) are reported separately, plus share fixed / broken. Done for the training generator and
for ``--eval-generators`` (swapping generators, paper §4.3).

Run::

    python bench/bench_self_correct_gsm8k.py --json bench/results/self_correct_gsm8k_cpu.json
    python bench/bench_self_correct_gsm8k.py --steps 5 --eval-questions 8      # smoke test
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make feedback_lm/ and plugins/ importable
    sys.path.insert(0, str(ROOT))

import torch

from feedback_lm.data.gsm8k import GRADED_MODELS, load_graded_solutions, prompt_for
from feedback_lm.policy import Policy
from feedback_lm.values import FinalAnswerValue, judge
from plugins.self_correct import (
    correct_iteratively,
    correction_metrics,
    corrector_loss,
    corrector_prompt,
    improving_pairs,
    oracle_stop,
    sample_pairs,
    token_similarity,
)

DEFAULT_DATA = Path(os.environ.get("FEEDBACK_LM_SHARED_DATA", ROOT.parent / "shared" / "data"))


def build_pool(solutions, train_generator: str, value):
    """Per train question: the generator's solution and the ground truth, with v and f."""
    entries = []
    for s in solutions:
        if s.model != train_generator:
            continue
        prompt = prompt_for(s.question)
        for text in (s.solution, s.ground_truth):
            j = value(prompt, text, s.answer)
            entries.append({"prompt": prompt, "response": text, "target": s.answer, "value": j.value,
                            "feedback": j.feedback})
    return entries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA / "gsm8k" / "example_model_solutions.jsonl"))
    ap.add_argument("--train-generator", default="6b_finetuning", choices=GRADED_MODELS)
    ap.add_argument("--eval-generators", default="6b_finetuning,175b_verification")
    ap.add_argument("--model", default="tiny-t5", choices=["tiny-t5", "tiny-gpt2"])
    ap.add_argument("--overrides", default="{}", help="JSON architecture overrides of the preset")
    ap.add_argument("--eval-questions", type=int, default=200)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=384)
    ap.add_argument("--no-feedback", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    value = FinalAnswerValue()
    solutions = load_graded_solutions(args.data)
    questions = sorted({s.question for s in solutions})
    random.Random(args.seed).shuffle(questions)
    held_out = set(questions[: args.eval_questions])
    train = [s for s in solutions if s.question not in held_out]
    test = [s for s in solutions if s.question in held_out]

    # ----------------------------------------------------------------------- pairing (Eq. 3)
    pool = build_pool(train, args.train_generator, value)
    pairs = improving_pairs([e["prompt"] for e in pool], [e["value"] for e in pool])
    policy = Policy.from_config({"name": args.model, "preset": args.model, "tokenizer": "byte",
                                 "overrides": json.loads(args.overrides), "max_length": 1024}).to(args.device)
    n_params = sum(p.numel() for p in policy.parameters())
    hyp = torch.tensor([i for i, _ in pairs])
    improvement = torch.tensor([pool[j]["value"] - pool[i]["value"] for i, j in pairs])
    tok = lambda text: list(text.encode())
    # s only matters for hypotheses with several corrections (a softmax over one item is 1): skip the rest
    n_corr = Counter(i for i, _ in pairs)
    similarity = torch.tensor([token_similarity(tok(pool[i]["response"]), tok(pool[j]["response"]))
                               if n_corr[i] > 1 else 0.0 for i, j in pairs])
    fb = (lambda f: None) if args.no_feedback else (lambda f: f)
    print(f"{len(pool)} pool entries, {len(pairs)} improving pairs from {args.train_generator}; "
          f"corrector {args.model} with {n_params / 1e6:.2f}M parameters", flush=True)

    # ----------------------------------------------------------------------- learning (Eq. 4)
    opt = torch.optim.AdamW(policy.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    start, losses = time.perf_counter(), []
    policy.train()
    for step in range(args.steps):
        chosen = [pairs[i] for i in sample_pairs(hyp, improvement, similarity, 1.0, args.beta, args.batch, gen).tolist()]
        inputs = [corrector_prompt(pool[i]["prompt"], " " + pool[i]["response"].strip(), fb(pool[i]["feedback"]))
                  for i, _ in chosen]
        enc = policy.encode_batch(inputs, [" " + pool[j]["response"].strip() for _, j in chosen], args.device)
        loss = corrector_loss(policy(**enc).logits, enc["response_ids"], enc["response_mask"])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f}s)", flush=True)
    train_s = time.perf_counter() - start
    policy.eval()

    # ----------------------------------------------------------------------- inference
    results = {}
    for g in args.eval_generators.split(","):
        rows = [s for s in test if s.model == g]
        prompts = [prompt_for(s.question) for s in rows]
        targets = [s.answer for s in rows]
        y0 = [s.solution for s in rows]
        v0, f0 = judge(value, prompts, y0, targets)
        t0 = time.perf_counter()
        samples = []

        def correct(idx, outs, fbs, prompts=prompts):
            out = []
            for c in range(0, len(idx), 32):
                chunk = [corrector_prompt(prompts[i], " " + o.strip(), fb(f))
                         for i, o, f in zip(idx[c:c + 32], outs[c:c + 32], fbs[c:c + 32])]
                out += policy.generate_text(chunk, max_new_tokens=args.max_new_tokens, do_sample=False)
            return [o.strip() for o in out]

        def judge_idx(idx, outs, prompts=prompts, targets=targets):
            return judge(value, [prompts[i] for i in idx], outs, [targets[i] for i in idx])

        values, history = correct_iteratively(y0, v0, f0, correct, judge_idx, args.k)
        oracle = oracle_stop(values, 1.0)
        m = correction_metrics(values, 1.0)
        m.update({f"oracle_value@{t}": float(x) for t, x in enumerate(oracle.mean(1))})
        m["unchanged@1"] = sum(a.strip() == b.strip() for a, b in zip(history[0], history[1])) / len(rows)
        m["n"] = len(rows)
        m["eval_s"] = time.perf_counter() - t0
        for i in range(3):
            samples.append({"y0": history[0][i][-200:], "y1": history[1][i][-200:], "target": targets[i]})
        m["samples"] = samples
        results[g] = m
        print(g, {k: round(v, 4) for k, v in m.items() if isinstance(v, float)}, flush=True)

    out = {"args": vars(args), "pool_entries": len(pool), "pairs": len(pairs), "params": n_params,
           "train_s": train_s, "final_loss_mean_last50": sum(losses[-50:]) / max(1, len(losses[-50:])),
           "results": results,
           "machine": {"torch": torch.__version__, "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                       "platform": platform.platform(), "device": args.device,
                       "date": dt.date.today().isoformat()}}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
