"""Self-correction on the embedded default (``python train.py algo=self_correct``): named variants x seeds.

Every variant is one real CLI run; runs go in parallel. Validation (greedy generator output, then k greedy
corrections on the 200 held-out prompts) every ``--val-every`` iterations logs ``self_correct/value@t``
(fixed k), ``oracle_value@t`` (stop once right: uses the gold answer, reported apart), fixed / broken.
The summary is the final value@0..k per variant (mean over seeds) and the plot the value@k curve.

  python bench/bench_self_correct_default.py --variants default,keep --seeds 0 --parallel 2 \
      --json out.json --plot out.png [more Hydra overrides for every run]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _cli import GPU_TRAINER, finish, read_curves, run_jobs, run_train

K = 3  # algo.num_corrections of the default
CURVES = tuple(f"self_correct/value@{t}" for t in range(K + 1)) + \
    tuple(f"self_correct/oracle_value@{t}" for t in range(K + 1)) + \
    ("self_correct/fixed", "self_correct/broken", "val/value", "val/generator_value", "val/accuracy",
     "val/generator_accuracy", "rollout/explore_value",
     "rollout/explore_gain", "self_correct/pairs", "self_correct/keep_pairs", "self_correct/pool_size",
     "train/loss")
# Named variants: overrides on top of conf/algo/self_correct.yaml (the default is the empty list).
# The default is keep_pairs=true, layout=prompt_last, M=32, 80 iterations; the 2026-11-27 sweep
# (bench/README.md) ran these on the earlier default (keep_pairs=false, prompt_first, M=8, 40 iterations).
_OLD = ["algo.keep_pairs=false", "algo.layout=prompt_first", "algo.updates_per_step=8", "algo.max_iterations=40"]
VARIANTS: dict[str, list[str]] = {
    "default": [],
    "old_default": _OLD,
    "keep": [*_OLD, "algo.keep_pairs=true"],
    "last": [*_OLD, "algo.layout=prompt_last"],
    "last_keep": [*_OLD, "algo.layout=prompt_last", "algo.keep_pairs=true"],
    "last_keep_m32": [*_OLD, "algo.layout=prompt_last", "algo.keep_pairs=true", "algo.updates_per_step=32"],
    "keep_m32_long": [*_OLD, "algo.keep_pairs=true", "algo.updates_per_step=32", "algo.max_iterations=120"],
    "last_keep_long": [*_OLD, "algo.layout=prompt_last", "algo.keep_pairs=true", "algo.max_iterations=120"],
    "last_keep_m32_long": [*_OLD, "algo.layout=prompt_last", "algo.keep_pairs=true", "algo.updates_per_step=32",
                           "algo.max_iterations=120"],
    "no_keep": ["algo.keep_pairs=false"],
    "first": ["algo.layout=prompt_first"],
}


def iterations_of(overrides: list[str], default: int = 80) -> int:
    for o in reversed(overrides):  # Hydra: the last override wins
        if o.startswith("algo.max_iterations="):
            return int(o.split("=", 1)[1])
    return default


def run_one(name: str, seed: int, args, work: Path) -> dict:
    over = VARIANTS[name]
    iters = iterations_of(over + args.extra)
    overrides = ["algo=self_correct", f"seed={seed}", f"trainer.val_check_interval={args.val_every}",
                 f"trainer.max_steps={iters}", "save_model=false", f"checkpoint_every_n_steps={iters}",
                 "trainer.log_every_n_steps=1", *over, *args.trainer_overrides, *args.extra]
    run_dir = work / f"{name}_s{seed}"
    run = run_train(overrides, run_dir, args.threads, args.run_timeout)
    print(f"{name} seed {seed}: rc={run['rc']} in {run['wall_seconds']:.0f}s", flush=True)
    return {"variant": name, "seed": seed, "iterations": iters, **run,
            "curves": read_curves(run_dir / "metrics.csv", CURVES, iters)}


def summarise(runs: list[dict]) -> dict:
    out = {}
    for name in dict.fromkeys(r["variant"] for r in runs):
        sel = [r for r in runs if r["variant"] == name and r["curves"]["self_correct/value@0"]]
        if not sel:
            continue

        def final(key, sel=sel):
            vals = [r["curves"][key][-1][1] for r in sel if r["curves"][key]]
            return sum(vals) / len(vals) if vals else None

        out[name] = {"seeds": [r["seed"] for r in sel],
                     "iterations_done": [r["curves"]["self_correct/value@0"][-1][0] for r in sel],
                     "value@k": [final(f"self_correct/value@{t}") for t in range(K + 1)],
                     "oracle_value@k": [final(f"self_correct/oracle_value@{t}") for t in range(K + 1)],
                     "fixed": final("self_correct/fixed"), "broken": final("self_correct/broken"),
                     "wall_seconds": [r["wall_seconds"] for r in sel]}
    return out


def markdown(summary: dict) -> str:
    lines = ["| variant | seeds | iterations | " + " | ".join(f"value@{t}" for t in range(K + 1)) +
             " | oracle@" + str(K) + " | fixed | broken |", "|---" * (K + 7) + "|"]
    for name, row in summary.items():
        v = " | ".join(f"{x:.3f}" for x in row["value@k"])
        lines.append(f"| {name} | {len(row['seeds'])} | {max(row['iterations_done'])} | {v} | "
                     f"{row['oracle_value@k'][-1]:.3f} | {100 * row['fixed']:.1f} % | {100 * row['broken']:.1f} % |")
    return "\n".join(lines)


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    colours: dict[str, str] = {}
    for r in runs:
        c = colours.setdefault(r["variant"], f"C{len(colours) % 10}")
        final = [r["curves"][f"self_correct/value@{t}"][-1][1] for t in range(K + 1)
                 if r["curves"][f"self_correct/value@{t}"]]
        a1.plot(range(len(final)), final, marker="o", color=c, alpha=0.8)
        v0 = dict(r["curves"]["self_correct/value@0"])
        pts = [(i, v - v0[i]) for i, v in r["curves"]["self_correct/value@1"] if i in v0]
        a2.plot([p[0] for p in pts], [p[1] for p in pts], color=c, alpha=0.8, marker=".")
    a2.axhline(0.0, color="k", ls=":", lw=1)
    a1.set(title="after training: value vs corrections", xlabel="corrections k", ylabel="mean value (held-out)")
    a1.set_xticks(range(K + 1))
    a2.set(title="during training: value@1 - value@0 (the generator's)", xlabel="iteration",
           ylabel="gain of one correction")
    a1.legend([Line2D([], [], color=c) for c in colours.values()], list(colours), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", default="default", help=f"comma-separated, from {list(VARIANTS)}")
    p.add_argument("--seeds", default="0")
    p.add_argument("--val-every", type=int, default=20)
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--run-timeout", type=float, default=None)
    p.add_argument("--trainer", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--work", default="/tmp/bench_self_correct")
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None)
    p.add_argument("--replot", default=None, help="only redraw --plot from this result JSON")
    p.add_argument("extra", nargs="*", help="more Hydra overrides for every run")
    args = p.parse_args(argv)
    if args.replot:
        result = json.loads(Path(args.replot).read_text())
        plot(result["runs"], Path(args.plot or Path(args.replot).with_suffix(".png")))
        return result
    names = [v for v in args.variants.split(",") if v]
    for v in names:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}; choose from {list(VARIANTS)}")
    args.trainer_overrides = GPU_TRAINER if args.trainer == "gpu" else []
    jobs = [(v, int(s)) for s in args.seeds.split(",") for v in names]
    t = time.perf_counter()
    runs = run_jobs(lambda name, seed: run_one(name, seed, args, Path(args.work)), jobs, args.parallel)
    summary = summarise(runs)
    table = markdown(summary)
    print(table)
    return finish({"what": "self-correction on the embedded default (bench/bench_self_correct_default.py)",
                   "variants": {v: VARIANTS[v] for v in names}, "extra": args.extra, "trainer": args.trainer,
                   "summary": summary, "table": table, "runs": runs}, t, args.json, args.plot, plot)


if __name__ == "__main__":
    main()
