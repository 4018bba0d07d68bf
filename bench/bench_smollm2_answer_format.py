"""What SmolLM2-135M-Instruct knows before any training, apart from the format it answers in (issue 13, 4a's
"no training" arm).

Exact match (the HIR paper's metric, and every arm of ``bench_smollm2_hir_table.py``) needs the bare answer
("(C)", "7"). An instruct model as it comes answers in sentences, so this script reads the held-out rows of
each real BBH task (the same seeded 80/20 split as ``data=bbh``) with the instruct model, greedy, once with
raw prompts and once through its chat template, and reports exact match next to answer match
(``feedback_lm.evaluation.answer_match``: the first ``(X)`` or integer in the output).

    python bench/bench_smollm2_answer_format.py --json bench/results/smollm2_answer_format_cpu.json
"""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext

from _cli import ROOT, finish
from _smollm2 import SHARED, model_config

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch

from feedback_lm.data.datamodule import TaskDataModule
from feedback_lm.evaluation import answer_match, exact_match
from feedback_lm.policy import Policy

TASKS = "object_counting,logical_deduction_three_objects,tracking_shuffled_objects_three_objects"
TEMPLATE = "Solve the question with correct answer.\n\nQ: {input}\nA:"   # the HIR table's input


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default=TASKS)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--trainer", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = "cuda" if args.trainer == "gpu" else "cpu"
    started, rows = time.perf_counter(), []
    for chat in (False, True):
        policy = Policy.from_config(model_config("model.lora.r=0", "model.max_length=512",
                                                 f"model.chat_template={str(chat).lower()}")).to(device).eval()
        autocast = torch.autocast(device, dtype=torch.bfloat16) if device == "cpu" else nullcontext()
        for task in args.tasks.split(","):
            dm = TaskDataModule(source="bbh", task=task, path=str(SHARED / "bbh" / f"{task}.json"), template=TEMPLATE,
                                num_val=100000, seed=0)
            dm.setup("fit")
            prompts, targets = [r["prompt"] for r in dm.val_rows], [r["target"] for r in dm.val_rows]
            outputs = []
            with torch.no_grad(), autocast:
                for i in range(0, len(prompts), 16):
                    outputs += policy.generate_text(prompts[i:i + 16], max_new_tokens=args.max_new_tokens,
                                                    do_sample=False)
            row = {"task": task, "chat_template": chat, "n": len(prompts),
                   "exact_match": float(exact_match(outputs, targets).mean()),
                   "answer_match": float(answer_match(outputs, targets).mean()),
                   "empty_first_line": sum(not o.strip().split("\n")[0] for o in outputs) / len(outputs),
                   "samples": [{"output": o[:200], "target": t} for o, t in list(zip(outputs, targets))[:3]]}
            rows.append(row)
            print({k: v for k, v in row.items() if k != "samples"}, flush=True)
    lines = ["| task | prompts | exact match | answer match |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} (n={r['n']}) | {'chat template' if r['chat_template'] else 'raw'} "
                     f"| {100 * r['exact_match']:.0f} % | {100 * r['answer_match']:.0f} % |")
    print("\n".join(lines))
    return finish({"what": "SmolLM2-135M-Instruct as it comes on real BBH: exact vs answer match, raw vs chat "
                           "template (bench_smollm2_answer_format.py)", "table": "\n".join(lines), "runs": rows},
                  started, args.json, None, lambda runs, path: None)


if __name__ == "__main__":
    main()
