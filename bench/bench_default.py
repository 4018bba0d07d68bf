"""The embedded default, whole command: ``python train.py`` of two code trees, alternated.

Times the whole command (start-up, the before/after evaluations, training, writing the model) the way a
user meets it, and reads the held-out exact match each run reached from its ``metrics.json``. Runs
alternate (now, before, before, now, ...: who goes first swaps every round) so that this machine's drift,
and the slower first run after a pause, fall on both arms alike.

    git worktree add /tmp/before <commit>          # the code to compare against
    python bench/bench_default.py --before /tmp/before --rounds 2 --threads 2 --json bench/results/default.json
    python bench/bench_default.py --before /tmp/before --threads 1 --side-by-side   # 1 thread each, pinned

``--side-by-side`` runs the two arms at the same time, one pinned core each, and swaps the cores every round.
Extra arguments after ``--`` go to both ``train.py`` commands. ``--before-arg`` adds one to the "before" arm
only; without ``--before`` both arms run this checkout, so a setting can be compared against its default:

    python bench/bench_default.py --before-arg frozen_cast_cache=false --rounds 4 -- model=smollm2-135m \
        trainer.max_steps=30 eval_before=false eval_after=false save_model=false
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pct(x: float | None) -> str:
    return "no held-out accuracy" if x is None else f"{x:.1%}"


def command(tree: Path, run_dir: Path, extra: list[str]) -> list[str]:
    return [sys.executable, str(tree / "train.py"), f"hydra.run.dir={run_dir}", *extra]


def environment(threads: int, tree: Path) -> dict[str, str]:
    # The script's own directory comes first on sys.path, so each tree imports its own feedback_lm and plugins.
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONPATH=str(tree))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def start(tree: Path, run_dir: Path, threads: int, extra: list[str], core: int | None) -> tuple[subprocess.Popen, float]:
    cmd = command(tree, run_dir, extra)
    if core is not None:
        cmd = ["taskset", "-c", str(core), *cmd]
    log = open(run_dir.with_suffix(".log"), "w")
    return subprocess.Popen(cmd, cwd=tree, env=environment(threads, tree), stdout=log, stderr=subprocess.STDOUT), time.perf_counter()


def result(run_dir: Path, seconds: float, returncode: int) -> dict:
    if returncode != 0:
        raise SystemExit(f"train.py failed in {run_dir} (exit {returncode}); see {run_dir.with_suffix('.log')}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"wall_s": round(seconds, 1), "fit_s": round(metrics.get("time/fit_seconds", float("nan")), 1),
            "accuracy": metrics.get("val/accuracy"), "before_accuracy": metrics.get("before/val/accuracy"),
            # an online algorithm's split of its last iteration (time/generate, time/forward, time/update, ...)
            "last_iteration_s": {k[5:]: round(v, 3) for k, v in metrics.items()
                                 if k.startswith("time/") and k != "time/fit_seconds"}}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=Path, help="a checkout of the code to compare against (default: this one)")
    p.add_argument("--before-arg", action="append", default=[], help="a train.py argument for the before arm only")
    p.add_argument("--now", type=Path, default=ROOT, help="the code measured (default: this checkout)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--side-by-side", action="store_true", help="both arms at once, one pinned core each")
    p.add_argument("--json", type=Path)
    p.add_argument("--out", type=Path, help="where the run directories go (default: a new temporary directory)")
    p.add_argument("extra", nargs="*", help="arguments for both train.py commands (after --)")
    args = p.parse_args(argv)
    if args.before is None and not args.before_arg:
        raise SystemExit("give --before <checkout>, or --before-arg to compare a setting on this checkout")
    trees = {"now": args.now.resolve(), "before": (args.before or args.now).resolve()}
    extra = {"now": args.extra, "before": [*args.extra, *args.before_arg]}
    for name, tree in trees.items():
        if not (tree / "train.py").is_file():
            raise SystemExit(f"--{name} {tree}: no train.py there (give a checkout of this project)")
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_default_"))
    out.mkdir(parents=True, exist_ok=True)
    rounds = []
    for r in range(args.rounds):
        row = {}
        if args.side_by_side:
            cores = (0, 1) if r % 2 == 0 else (1, 0)
            procs = {name: start(tree, out / f"{name}{r}", args.threads, extra[name], core)
                     for (name, tree), core in zip(trees.items(), cores)}
            for name, (proc, t0) in procs.items():
                proc.wait()
                row[name] = result(out / f"{name}{r}", time.perf_counter() - t0, proc.returncode)
            row["cores"] = {"now": cores[0], "before": cores[1]}
        else:
            order = list(trees.items())  # the first run after a pause runs slower here: swap who goes first
            for name, tree in order if r % 2 == 0 else order[::-1]:
                proc, t0 = start(tree, out / f"{name}{r}", args.threads, extra[name], None)
                proc.wait()
                row[name] = result(out / f"{name}{r}", time.perf_counter() - t0, proc.returncode)
        row["ratio"] = round(row["before"]["wall_s"] / row["now"]["wall_s"], 2)
        row["fit_ratio"] = round(row["before"]["fit_s"] / row["now"]["fit_s"], 2)
        rounds.append(row)
        print(f"round {r + 1}: now {row['now']['wall_s']} s ({_pct(row['now']['accuracy'])}, fit "
              f"{row['now']['fit_s']} s), before {row['before']['wall_s']} s ({_pct(row['before']['accuracy'])}, fit "
              f"{row['before']['fit_s']} s): {row['ratio']}x (fit {row['fit_ratio']}x)", flush=True)
    summary = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "threads": args.threads,
               "side_by_side": args.side_by_side, "before": str(trees["before"]), "extra": args.extra,
               "before_args": args.before_arg, "median_fit_ratio": statistics.median(r["fit_ratio"] for r in rounds),
               "rounds": rounds, "median_ratio": statistics.median(r["ratio"] for r in rounds), "runs": str(out)}
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return summary


if __name__ == "__main__":
    main()
