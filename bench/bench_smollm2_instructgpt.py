"""The InstructGPT recipe on SmolLM2-135M-Instruct (issue 13, item 4d): SFT -> simulated labels -> reward
model -> PPO with the adaptive KL controller, and with beta = 0 (reward hacking).

Every stage is the project's own command line, on BBH-format object_counting (generated):

1. SFT: ``python train.py model=smollm2-135m`` (the preset's CPU run; more steps at the GPU size).
2. Labels: ``python -m feedback_lm.collect --model <SFT run> --task object_counting --k 4 --mode rank``:
   K=4 samples per prompt ranked by the simulated labeler (the verifier's graded score); training prompts
   ``--seed 1``, held-out prompts ``--seed 2``.
3. Reward model: ``algo=reward_model data.source=jsonl algo.init_from=<SFT model>``.
4. PPO from the SFT model, through ``bench/bench_ppo_seeds.py``: arms ``rm`` (the reward model, adaptive
   KL), ``rm_beta0`` (the reward model, beta = 0) and ``verifier`` (the true reward, for reference). Per
   iteration it logs the reward-model score, the KL and held-out exact match; the plot shows them per arm
   (the reward-hacking plot: with beta = 0 the score the policy optimises can rise while exact match and KL
   say otherwise).

    python bench/bench_smollm2_instructgpt.py --json bench/results/smollm2_instructgpt_cpu.json    # CPU size
    python bench/bench_smollm2_instructgpt.py --trainer gpu --json bench/results/smollm2_instructgpt_gpu.json
    python bench/bench_smollm2_instructgpt.py --smoke --work /tmp/igpt_smoke                        # plumbing
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import bench_ppo_seeds
from _cli import ROOT, finish, run_train
from _smollm2 import MODEL, add_size_args, seeds, size, trainer_overrides

QUIET = ["trainer.enable_progress_bar=false"]


def stage(name: str, overrides: list[str], work: Path) -> Path:
    run_dir = work / name
    run = run_train(overrides, run_dir, threads=None, reuse=True)  # re-running resumes at the first unfinished stage
    if run["rc"] != 0:
        raise SystemExit(f"stage {name} failed (rc={run['rc']}); see {run_dir}/bench.log")
    print(f"{name}: {json.loads((run_dir / 'metrics.json').read_text()).get('val/accuracy')}", flush=True)
    return run_dir


def collect(sft: Path, prompts: int, seed: int, out: Path) -> None:
    if out.is_file():
        return
    cmd = [sys.executable, "-m", "feedback_lm.collect", "--model", str(sft), "--task", "object_counting",
           "--num-prompts", str(prompts), "--k", "4", "--mode", "rank", "--max-new-tokens", "16",
           "--batch-size", "16", "--seed", str(seed), "--no-progress", "--out", str(out)]
    subprocess.run(cmd, cwd=ROOT, check=True)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_size_args(p, "/tmp/bench_smollm2_instructgpt")
    p.add_argument("--arms", default="rm,rm_beta0,verifier")
    args = p.parse_args(argv)
    work = Path(args.work).resolve()
    sft_steps, n_train, n_val, rm_steps, iterations, batch = size(
        args, cpu=(60, 120, 40, 60, 8, 8), gpu=(300, 2000, 400, 500, 40, 32), smoke=(2, 4, 4, 2, 2, 2),
        names=("sft_steps", "n_train", "n_val", "rm_steps", "iterations", "batch"))
    started = time.perf_counter()
    sft = stage("sft", [*MODEL, f"trainer.max_steps={sft_steps}", f"trainer.val_check_interval={sft_steps}", *QUIET,
                        *trainer_overrides(args)], work)
    collect(sft, n_train, 1, work / "labels" / "train.jsonl")
    collect(sft, n_val, 2, work / "labels" / "val.jsonl")
    rm = stage("reward_model", ["algo=reward_model", *MODEL, "data=comparisons", "data.source=jsonl",
                                f"data.path={work / 'labels' / 'train.jsonl'}", f"data.val_path={work / 'labels' / 'val.jsonl'}",
                                "data.num_val=100000", f"data.batch_size={batch}", f"algo.init_from={sft / 'model'}",
                                "algo.lr=2e-4", f"trainer.max_steps={rm_steps}", f"trainer.val_check_interval={rm_steps}",
                                *QUIET, *trainer_overrides(args)], work)
    ppo = bench_ppo_seeds.main([
        "--sft", str(sft / "model"), "--rm", str(rm / "model"), "--arms", args.arms,
        "--seeds", ",".join(map(str, seeds(args))), "--iterations", str(iterations),
        "--val-every", str(max(1, iterations // 4)), "--threads", "2" if args.trainer == "cpu" else "1",
        "--trainer", args.trainer, "--work", str(work / "ppo"), "--reuse", "--plot", str(work / "ppo.png"),
        *MODEL, f"data.batch_size={batch}", f"algo.minibatch_size={batch}", "algo.lr=1e-4", "data.num_val=50",
        "algo.eval_max_new_tokens=16", *QUIET])
    return finish({"what": "InstructGPT recipe on SmolLM2-135M-Instruct (bench_smollm2_instructgpt.py)",
                   "trainer": args.trainer, "smoke": args.smoke,
                   "sft": json.loads((sft / "metrics.json").read_text()),
                   "reward_model": json.loads((rm / "metrics.json").read_text()),
                   "ppo": {k: ppo[k] for k in ("summary", "table")}, "plot": str(work / "ppo.png"), "runs": ppo["runs"]},
                  started, args.json, None, lambda runs, path: None)


if __name__ == "__main__":
    main()
