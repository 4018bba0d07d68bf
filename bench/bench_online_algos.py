"""PPO, RLOO and GRPO against the verifier at equal wall-clock budgets, and DPO beside the reward model +
PPO pipeline on the same simulated labels; from the embedded default's SFT model, on both model families.

Each arm x family x seed is one real CLI run (``python train.py algo=<algo> ...``) started from the same
SFT model and stopped by ``trainer.max_time`` (the budget); its saved ``model/`` is then evaluated here,
the same way for every arm, on the default task's held-out prompts: greedy and sampled exact match (one
seeded sample per prompt at temperature 1), the KL to the SFT model (the mean over held-out prompts of
``Σ_t log π(y_t) − log π_sft(y_t)`` on the samples ``y ~ π``), the iterations done and seconds per iteration.

Arms (all from ``--sft``): ``ppo``, ``rloo``, ``grpo`` (reward=verifier; ``data.batch_size`` prompts per
iteration, k = G = 4 samples each for RLOO and GRPO); ``dpo`` (``--labels``: the comparisons the reward
model was trained on; without it the generated comparisons of the task) and ``rm_ppo`` (PPO against
``--rm``, the reward model trained on those labels).

  python bench/bench_online_algos.py --sft tiny-t5=<t5 sft>/model,tiny-gpt2=<gpt2 sft>/model \
      --rm tiny-t5=<t5 rm>/model,tiny-gpt2=<gpt2 rm>/model --labels tiny-t5=<t5 labels>,tiny-gpt2=<gpt2 labels> \
      --arms ppo,rloo,grpo,dpo,rm_ppo --seeds 0,1,2 --minutes 10 --parallel 3 --json out.json
  python bench/bench_online_algos.py --smoke      # untrained presets, a few seconds each: the wiring only

``--sft``/``--rm``/``--labels`` come from ``python train.py experiment=instructgpt_tiny`` (its sft/ and
reward_model/ stages and the labels it generated), once per model family.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import threading
import time
from pathlib import Path

from _cli import GPU_TRAINER, ROOT, finish, run_jobs, run_train

COMMON = ["trainer.max_steps=100000", "trainer.val_check_interval=100000",
          "eval_before=false", "eval_after=false", "save_model=true", "checkpoint_every_n_steps=100000",
          "trainer.enable_progress_bar=false", "logger=csv"]
ONLINE = ["algo.lr=2e-5", "reward=verifier", "data.batch_size=64"]  # [PROJECT] one LR: PPO's on the default task
ARMS = {
    "ppo": ["algo=ppo", *ONLINE, "algo.schedule=constant", "algo.minibatch_size=16"],
    "rloo": ["algo=rloo", *ONLINE, "algo.k=4"],
    "grpo": ["algo=grpo", *ONLINE, "algo.group_size=4"],
    "dpo": ["algo=dpo", "data=comparisons", "algo.lr=2e-5", "algo.warmup_steps=10", "data.batch_size=16"],
    "rm_ppo": ["algo=ppo", "algo.lr=2e-5", "algo.schedule=constant", "algo.minibatch_size=16", "reward=model",
               "reward.path={rm}", "data.batch_size=64"],
}
SMOKE = ["data.num_train=32", "data.num_val=8", "data.batch_size=4"]
SMOKE_ALGO = {"ppo": ["algo.max_new_tokens=8", "algo.normalize_samples=8"], "rloo": ["algo.max_new_tokens=8"],
              "grpo": ["algo.max_new_tokens=8"], "dpo": [], "rm_ppo": ["algo.max_new_tokens=8", "algo.normalize_samples=8"]}


def last_wins(overrides: list[str]) -> list[str]:
    """Hydra takes one value per key: keep the last ``key=value`` of each key, in order."""
    keyed = {o.split("=", 1)[0]: o for o in overrides}
    return list(keyed.values())


def family_map(text: str | None) -> dict[str, str]:
    """``tiny-t5=<dir>,tiny-gpt2=<dir>`` -> ``{family: dir}``."""
    return dict(item.split("=", 1) for item in text.split(",")) if text else {}


def run_one(arm: str, family: str, seed: int, args, out_root: Path) -> dict:
    run_dir = out_root / f"{arm}_{family}_s{seed}"
    model = [f"model={family}"]
    if family in args.sft_dirs:
        model += ["model.preset=null", f"model.name_or_path={args.sft_dirs[family]}"]
    data = []
    labels = args.label_files.get(family, args.label_files.get(""))
    if arm == "dpo" and labels:
        data = ["data.source=jsonl", f"data.path={labels}"]
    smoke = [*SMOKE, *SMOKE_ALGO[arm]] if args.smoke else []
    overrides = [*model, *COMMON, *[o.format(rm=args.rm_dirs.get(family)) for o in ARMS[arm]], *data, *smoke,
                 f"seed={seed}", f"+trainer.max_time={{seconds: {int(args.minutes * 60)}}}", *args.trainer_overrides]
    run = run_train(last_wins(overrides), run_dir, args.threads, timeout=args.minutes * 60 + 900)
    out = {"arm": arm, "family": family, "seed": seed, **run, "load_after": round(os.getloadavg()[0], 2)}
    metrics = run_dir / "metrics.json"
    if run["rc"] == 0 and metrics.is_file():
        m = json.loads(metrics.read_text())
        steps = m.get("trainer/global_step", 0)
        out.update(iterations=steps, seconds_per_iteration=m["time/fit_seconds"] / max(1, steps),
                   **evaluate(run_dir / "model", family, args))
    print(f"{arm} {family} seed {seed}: rc={run['rc']} in {run['wall_seconds']:.0f}s "
          f"{ {k: v for k, v in out.items() if k in ('greedy_em', 'sampled_em', 'kl', 'iterations')} }", flush=True)
    return out


# Evaluations run one at a time (--parallel runs train side by side): Hydra's compose API and torch's global RNG
# (the seeded samples) are process-wide state.
_EVAL = threading.Lock()


def held_out(family: str, args) -> tuple[dict, list[str], list[str]]:
    """The family's model config and the default task's held-out prompts and targets."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from feedback_lm.testing import compose

    cfg = compose([f"model={family}", f"data.num_val={args.num_val}"])
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    return (OmegaConf.to_container(cfg.model, resolve=True), [r["prompt"] for r in dm.val_rows],
            [r["target"] for r in dm.val_rows])


def evaluate(model_dir: Path, family: str, args) -> dict:
    """Greedy and sampled exact match on the held-out prompts, and the KL to the SFT model (when given)."""
    with _EVAL:
        return _evaluate(model_dir, family, args)


def _evaluate(model_dir: Path, family: str, args) -> dict:
    import sys

    import torch

    sys.path.insert(0, str(ROOT))
    from feedback_lm.evaluation import exact_match
    from feedback_lm.policy import Policy

    model_cfg, prompts, targets = held_out(family, args)
    device = "cuda" if torch.cuda.is_available() and args.trainer == "gpu" else "cpu"
    policy = Policy.from_config({**model_cfg, "preset": None, "name_or_path": str(model_dir)}).to(device).eval()
    sft = args.sft_dirs.get(family)
    ref = Policy.from_config({**model_cfg, "preset": None, "name_or_path": sft}).to(device).eval() if sft else None
    greedy, sampled, kls = [], [], []
    torch.manual_seed(10_007)
    with torch.no_grad():
        for s in range(0, len(prompts), 100):
            chunk = prompts[s: s + 100]
            greedy += policy.generate_text(chunk, max_new_tokens=64, do_sample=False)
            ids, mask = (x.to(device) for x in policy.encode_prompts(chunk))
            gen = policy.generate(ids, mask, max_new_tokens=64, do_sample=True, temperature=1.0)
            sampled += policy.decode(gen.response_ids, gen.response_mask)
            if ref is not None:
                args_ = (ids, mask, gen.response_ids, gen.response_mask)
                kls += (policy.logprobs(*args_) - ref.logprobs(*args_)).sum(-1).tolist()
    return {"greedy_em": float(exact_match(greedy, targets).mean()),
            "sampled_em": float(exact_match(sampled, targets).mean()),
            "kl": sum(kls) / len(kls) if kls else None}


def summarise(runs: list[dict]) -> dict:
    """Mean and standard error over seeds, per (arm, family)."""
    out: dict[str, dict] = {}
    for arm, family in dict.fromkeys((r["arm"], r["family"]) for r in runs):
        sel = [r for r in runs if r["arm"] == arm and r["family"] == family and "greedy_em" in r]
        row = {"seeds": [r["seed"] for r in sel]}
        for key in ("greedy_em", "sampled_em", "kl", "iterations", "seconds_per_iteration"):
            vals = [r[key] for r in sel if r.get(key) is not None]
            if vals:
                m = sum(vals) / len(vals)
                se = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1) / len(vals)) if len(vals) > 1 else None
                row[key] = [m, se]
        out[f"{arm}/{family}"] = row
    return out


ARM_NAMES = {"start": "SFT model (the start)", "ppo": "PPO, verifier", "rloo": "RLOO (k=4), verifier",
             "grpo": "GRPO (G=4), verifier", "dpo": "DPO on the simulated labels",
             "rm_ppo": "PPO, reward model on the same labels"}


def table(result: dict) -> str:
    """The markdown table: mean ± standard error over seeds, per family and arm, the start first."""
    def cell(row, key, pct=False, digits=2):
        if key not in row:
            return "-"
        m, se = row[key]
        scale = 100 if pct else 1
        text = f"{scale * m:.1f}" if pct else f"{m:.{digits}f}"
        return text + (f" ± {scale * se:.{1 if pct else digits}f}" if se is not None else "") + (" %" if pct else "")

    lines = ["| family | arm | iterations in the budget | s / iteration | greedy exact match | sampled exact match "
             "| KL to the SFT model (nats) |", "|---|---|---|---|---|---|---|"]
    for family, start in result.get("start", {}).items():
        lines.append(f"| {family} | {ARM_NAMES['start']} | - | - | {100 * start['greedy_em']:.1f} % "
                     f"| {100 * start['sampled_em']:.1f} % | 0 |")
        for key, row in result["summary"].items():
            arm, fam = key.split("/")
            if fam == family:
                lines.append(f"| | {ARM_NAMES.get(arm, arm)} | {cell(row, 'iterations', digits=0)} "
                             f"| {cell(row, 'seconds_per_iteration')} | {cell(row, 'greedy_em', pct=True)} "
                             f"| {cell(row, 'sampled_em', pct=True)} | {cell(row, 'kl')} |")
    return "\n".join(lines)


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sft", default="", help="family=<SFT model dir>,... (the start of every arm)")
    p.add_argument("--rm", default="", help="family=<reward model dir>,... (the rm_ppo arm)")
    p.add_argument("--labels", default=None, help="family=<comparisons JSONL>,... (or one path for every family): "
                   "the labels the reward model was trained on (dpo)")
    p.add_argument("--arms", default="ppo,rloo,grpo,dpo,rm_ppo")
    p.add_argument("--families", default="tiny-t5,tiny-gpt2")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--minutes", type=float, default=10.0, help="the wall-clock budget of each run's training")
    p.add_argument("--num-val", type=int, default=200)
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--trainer", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--smoke", action="store_true", help="untrained presets, tiny data, a few seconds per run")
    p.add_argument("--out", default="outputs/bench_online_algos")
    p.add_argument("--json", default=None)
    p.add_argument("--table-from", default=None, help="a result JSON of this script: evaluate the start models "
                   "(--sft) if it lacks them, print its table and write both back")
    args = p.parse_args()
    if args.smoke:
        args.minutes, args.num_val, args.seeds = min(args.minutes, 0.25), 8, "0"
    args.sft_dirs, args.rm_dirs = family_map(args.sft), family_map(args.rm)
    args.label_files = family_map(args.labels) if args.labels and "=" in args.labels else {"": args.labels}
    args.trainer_overrides = GPU_TRAINER if args.trainer == "gpu" else []
    arms = [a for a in args.arms.split(",") if a != "rm_ppo" or args.rm_dirs]
    # seed-major, arms interleaved: a change in the machine's load over the hours falls on every arm alike
    jobs = [(arm, fam, int(seed), args, Path(args.out)) for seed in args.seeds.split(",")
            for fam in args.families.split(",") for arm in arms]
    if args.table_from:
        result = json.loads(Path(args.table_from).read_text())
        result.setdefault("start", {f: evaluate(Path(d), f, args) for f, d in args.sft_dirs.items()})
        result["table"] = table(result)
        Path(args.table_from).write_text(json.dumps(result, indent=1))
        print(result["table"])
        return result
    started = time.perf_counter()
    runs = run_jobs(run_one, jobs, args.parallel)
    result = {"args": {k: v for k, v in vars(args).items() if k != "trainer_overrides"}, "runs": runs,
              "summary": summarise(runs),
              "start": {f: evaluate(Path(d), f, args) for f, d in args.sft_dirs.items()}}  # the SFT models as given
    result["table"] = table(result)
    print(result["table"])
    return finish(result, started, args.json, None, lambda runs, path: None)


if __name__ == "__main__":
    main()
