"""PPO on the embedded default, several seeds: does PPO raise held-out accuracy over the SFT model?

Each arm x seed is one real CLI run (``python train.py algo=ppo ...``, the pipeline's PPO settings, see
conf/experiment/instructgpt_tiny.yaml) started from the same SFT model; runs go in parallel. Validation
every ``--val-every`` iterations logs greedy ``val/accuracy`` / ``val/score`` and, on the same 200 held-out
prompts, one seeded sample per prompt at the training temperature (``val/sampled_accuracy`` /
``val/sampled_score``: the distribution PPO optimises). The summary is mean +- standard error over seeds
of before/after values and of the KL in the reward over the last five iterations.

Arms: ``verifier`` (the true reward, adaptive KL), ``rm`` (a trained reward model, adaptive KL),
``rm_beta0`` (the reward model, beta = 0: reward hacking).

  python bench/bench_ppo_seeds.py --sft <run>/sft/model [--rm <run>/reward_model/model] \
      --arms verifier,rm,rm_beta0 --seeds 0,1,2 --iterations 40 --parallel 3 --json out.json --plot out.png

``--sft``/``--rm`` come from ``python train.py experiment=instructgpt_tiny`` (its sft/ and reward_model/
stages). ``--trainer gpu`` runs every process on the one GPU (fp32, as on CPU). ``--evaluate`` saves every
run's model and evaluates them all with ``feedback_lm.evaluate`` against the SFT model on its held-out
prompts (greedy and sampled exact match, KL to SFT, dist-2, and the reward model's win rate against SFT),
mean +- standard error over seeds per arm; the per-run numbers with intervals are in ``<work>/eval/``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: feedback_lm

from _cli import GPU_TRAINER, finish, read_curves, run_jobs, run_train

from feedback_lm.evaluation import mean_se

COMMON = ["algo=ppo", "model.preset=null", "algo.lr=2e-5", "data.batch_size=256", "algo.minibatch_size=64",
          "trainer.log_every_n_steps=1", "algo.eval_sampled=true"]
ARMS = {
    "verifier": ["reward=verifier", "algo.kl_horizon=1000"],
    "rm": ["reward=model", "reward.path={rm}", "algo.kl_horizon=1000"],
    "rm_beta0": ["reward=model", "reward.path={rm}", "algo.kl_controller=fixed", "algo.kl_coef=0.0"],
}
CURVES = ("val/accuracy", "val/sampled_accuracy", "val/score", "val/sampled_score", "ppo/kl", "ppo/kl_coef",
          "rollout/accuracy", "rollout/score_mean", "rollout/response_len")


def run_one(arm: str, seed: int, args, out_root: Path) -> dict:
    run_dir = out_root / f"{arm}_s{seed}"
    overrides = [*COMMON, f"model.name_or_path={args.sft}", f"seed={seed}", f"data.seed={args.data_seed}",
                 f"trainer.max_steps={args.iterations}", f"trainer.val_check_interval={args.val_every}",
                 f"checkpoint_every_n_steps={args.iterations}",
                 f"save_model={str(args.evaluate).lower()}",
                 *[o.format(rm=args.rm) for o in ARMS[arm]], *args.trainer_overrides]
    run = run_train(overrides, run_dir, args.threads, args.run_timeout, reuse=args.reuse)
    took = run["command"] if run["wall_seconds"] is None else f"in {run['wall_seconds']:.0f}s"
    print(f"{arm} seed {seed}: rc={run['rc']} {took}", flush=True)
    return {"arm": arm, "seed": seed, **run, "curves": read_curves(run_dir / "metrics.csv", CURVES, args.iterations)}


def summarise(runs: list[dict]) -> dict:
    out = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        sel = [r for r in runs if r["arm"] == arm and (r["rc"] == 0 or len(r["curves"]["val/accuracy"]) > 1)]
        if not sel:
            continue
        row: dict[str, object] = {"seeds": [r["seed"] for r in sel],
                                  "iterations_done": [r["curves"]["val/accuracy"][-1][0] for r in sel]}
        for k in ("val/accuracy", "val/sampled_accuracy", "val/score", "val/sampled_score"):
            firsts = [r["curves"][k][0][1] for r in sel if r["curves"][k]]
            lasts = [r["curves"][k][-1][1] for r in sel if r["curves"][k]]
            if lasts:
                row[k] = {"before": mean_se(firsts), "after": mean_se(lasts),
                          "gain": mean_se([b - a for a, b in zip(firsts, lasts)])}
        kls = [sum(v for _, v in r["curves"]["ppo/kl"][-5:]) / len(r["curves"]["ppo/kl"][-5:])
               for r in sel if r["curves"]["ppo/kl"]]
        if kls:
            row["kl_last5"] = mean_se(kls)
        row["final_kl_coef"] = [r["curves"]["ppo/kl_coef"][-1][1] for r in sel if r["curves"]["ppo/kl_coef"]]
        row["wall_seconds"] = [r["wall_seconds"] for r in sel]
        out[arm] = row
    return out


EVAL_METRICS = ("greedy/exact_match", "sampled/exact_match", "sampled/kl", "sampled/dist2", "sampled/rm_win_rate")


def evaluate_runs(runs: list[dict], args, out_root: Path) -> dict:
    """``python -m feedback_lm.evaluate`` on every finished run's model against the SFT model (its held-out
    prompts; the reward model as judge when given); per arm, the mean +- standard error over seeds."""
    from feedback_lm.evaluate import evaluate

    dirs = {f"{r['arm']}_s{r['seed']}": r for r in runs if (out_root / f"{r['arm']}_s{r['seed']}" / "model").is_dir()}
    result = evaluate([str(out_root / d) for d in dirs], baseline=args.sft, judge=args.rm, out=out_root / "eval",
                      num_prompts=args.eval_prompts, max_new_tokens=32, device="cuda" if args.trainer == "gpu" else None)
    summary = {}
    for arm in dict.fromkeys(r["arm"] for r in dirs.values()):
        metrics = [result["runs"][d]["metrics"] for d, r in dirs.items() if r["arm"] == arm]
        summary[arm] = {k: mean_se([m[k]["value"] for m in metrics]) for k in EVAL_METRICS if all(k in m for m in metrics)}
    summary[result["baseline"]] = {k: (v["value"], 0.0) for k, v in result["runs"][result["baseline"]]["metrics"].items()
                                   if k in EVAL_METRICS}
    return {"eval_json": str(out_root / "eval" / "eval.json"), "by_arm": summary}


def eval_markdown(evaluation: dict) -> str:
    lines = ["| arm | " + " | ".join(EVAL_METRICS) + " |", "|---|" + "---|" * len(EVAL_METRICS)]
    for arm, row in evaluation["by_arm"].items():
        lines.append(f"| {arm} | " + " | ".join(f"{row[k][0]:.3f} ± {row[k][1]:.3f}" if k in row else "" for k in EVAL_METRICS)
                     + " |")
    return "\n".join(lines)


def markdown(summary: dict, iterations: int) -> str:
    def cell(ms, pct=True):
        m, se = ms
        f, digits = (100.0, 1) if pct else (1.0, 3)
        spread = "" if se != se else f" ± {f * se:.{digits}f}"  # one seed: no standard error (nan)
        return f"{f * m:.{digits}f}{spread}"

    lines = [(f"| arm | seeds | greedy exact match, before -> after {iterations} it. | sampled exact match | "
              "gain (sampled) | sampled score | KL, last 5 it. |"), "|---|---|---|---|---|---|---|"]
    for arm, row in summary.items():
        g, s, sc = row.get("val/accuracy"), row.get("val/sampled_accuracy"), row.get("val/sampled_score")
        lines.append(
            f"| {arm} | {len(row['seeds'])} | {cell(g['before'])} -> {cell(g['after'])} % | "
            f"{cell(s['before'])} -> {cell(s['after'])} % | {cell(s['gain'])} pts | "
            f"{cell(sc['before'], False)} -> {cell(sc['after'], False)} | {cell(row['kl_last5'], False)} |"
            if g and s and sc and "kl_last5" in row else f"| {arm} | {len(row['seeds'])} | incomplete | | | | |")
    return "\n".join(lines)


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    keys = ("val/sampled_accuracy", "val/accuracy", "val/sampled_score", "ppo/kl")
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4))
    colours = {}
    for r in runs:
        c = colours.setdefault(r["arm"], f"C{len(colours)}")
        for ax, k in zip(axes, keys):
            pts = r["curves"][k]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=c, alpha=0.8)
    for ax, k in zip(axes, keys):
        ax.set_title(k + (" (each arm's own reward)" if "score" in k else ""), fontsize=9)
        ax.set_xlabel("PPO iteration")
    axes[0].legend([Line2D([], [], color=c) for c in colours.values()], list(colours), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--replot", default=None, help="only redraw --plot from this result JSON")
    p.add_argument("--sft", default=None, help="the SFT model directory (Hugging Face format)")
    p.add_argument("--rm", default=None, help="the reward model directory (arms rm, rm_beta0)")
    p.add_argument("--arms", default="verifier")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--data-seed", type=int, default=0, help="the SFT run's data seed: the same held-out prompts "
                   "(never in its training data) and training prompts for every seed")
    p.add_argument("--val-every", type=int, default=5)
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--run-timeout", type=float, default=None, help="seconds; a run past it is stopped and "
                   "summarised as far as it got")
    p.add_argument("--trainer", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--work", default="/tmp/bench_ppo_seeds")
    p.add_argument("--reuse", action="store_true", help="read back runs of --work that finished (their "
                   "metrics.json exists) instead of running them again")
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None)
    p.add_argument("--evaluate", action="store_true", help="save every run's model and evaluate them with "
                   "feedback_lm.evaluate against the SFT model (KL, dist-2, exact match, RM win rate)")
    p.add_argument("--eval-prompts", type=int, default=200, help="held-out prompts of the evaluation")
    p.add_argument("extra", nargs="*", help="more Hydra overrides for every run")
    args = p.parse_args(argv)
    if args.replot:
        result = json.loads(Path(args.replot).read_text())
        plot(result["runs"], Path(args.plot or Path(args.replot).with_suffix(".png")))
        return result
    if not args.sft:
        p.error("--sft <SFT model directory> is required")
    arms = [a for a in args.arms.split(",") if a]
    for a in arms:
        if a not in ARMS:
            p.error(f"unknown arm {a!r}; choose from {list(ARMS)}")
        if a.startswith("rm") and not args.rm:
            p.error(f"arm {a!r} needs --rm <reward model directory>")
    args.sft = str(Path(args.sft).resolve())
    args.rm = str(Path(args.rm).resolve()) if args.rm else None
    args.trainer_overrides = (GPU_TRAINER if args.trainer == "gpu" else []) + args.extra
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(args.work)
    t = time.perf_counter()
    runs = run_jobs(lambda arm, seed: run_one(arm, seed, args, work), [(a, s) for s in seeds for a in arms],
                    args.parallel)
    summary = summarise(runs)
    table = markdown(summary, args.iterations)
    print(table)
    evaluation = evaluate_runs(runs, args, work) if args.evaluate else None
    if evaluation:
        evaluation["table"] = eval_markdown(evaluation)
        print(evaluation["table"])
    return finish({"what": "PPO from the SFT model on the embedded default, several seeds (bench/bench_ppo_seeds.py)",
                   "sft": args.sft, "rm": args.rm, "iterations": args.iterations, "trainer": args.trainer,
                   "summary": summary, "table": table, "evaluation": evaluation, "runs": runs},
                  t, args.json, args.plot, plot)


if __name__ == "__main__":
    main()
