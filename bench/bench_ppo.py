"""PPO iteration speed on the CPU: our ``PPO`` plugin under a real ``lightning.Trainer`` ("ours") against
TRL 0.11.4's ``PPOTrainer`` ("trl"), side by side in one run, for a causal (GPT-2) and an
encoder-decoder (T5) tiny model (issue 4: "our PPO iteration at least 2x faster than TRL's for both
families").

Workload, the same for both (see bench/README.md for the results):

* byte vocabulary (``ByT5Tokenizer()``, 384 ids), random weights, fp32, dropout 0:
  tiny GPT-2 (4 layers, d=256, 4 heads) or tiny T5 (2+2 layers, d=256, d_ff=1024, 4 heads, d_kv=64);
* 64 prompts of 32 bytes per iteration (lowercase letters and spaces, fresh prompts every iteration;
  T5's encoder also reads an EOS, as both frameworks feed it), exactly 32 sampled response tokens
  (temperature 1, no top-k/top-p; EOS does not stop sampling and nothing is cut after it);
* reward: ``feedback_lm.rewards.LengthReward(8)`` on the response text cut after its first EOS, or
  -1 when there is no EOS (our ``algo.mode=lhp_fixed_length`` rule; the TRL side computes the same);
* 4 PPO epochs of minibatches of 16 (16 optimizer steps per iteration), Adam lr 1e-4 eps 1e-5
  (constant), adaptive KL controller (initial beta 0.1, target 2 nats, horizon 10000), gamma 1,
  lambda 0.95, clip 0.2 / 0.2, vf_coef 0.1, reward whitening on, no gradient clipping, shared-trunk
  value head.

* **ours**: ``plugins.ppo.PPO`` instantiated from the composed Hydra config (``conf/train.yaml`` with
  ``algo=ppo`` and the overrides in ``ours_overrides``), fitted by the config's ``lightning.Trainer``
  (``trainer=cpu``) with logger, checkpointing, progress bar, model summary and validation off; a
  DataLoader serves the 64 prompts of each iteration. One Lightning step = one PPO iteration.
* **trl_bf16**: the same under accelerate's ``mixed_precision="bf16"`` (``torch.autocast`` on the CPU).
* **trl**: ``bench/_trl_ppo.py`` in its own virtualenv ``bench/.venv-trl011`` (created on first use:
  torch 2.13.0 from the local CPU wheel, trl 0.11.4, transformers 4.46.3, rich). Per iteration:
  tokenize the prompts, ``ppo_trainer.generate`` (all 64 in one batch), decode and score, then
  ``ppo_trainer.step(queries, responses, scores)``.

An iteration is timed from the start of the rollout to the end of the update (``perf_counter``;
ours: ``on_train_batch_start`` -> ``on_train_batch_end``; TRL: before tokenizing -> after ``step``).
The first ``--warmup`` iterations of each process are dropped; the median of the rest is reported,
with ours' own per-iteration split (``time/generate``, ``time/forward``, ``time/score``,
``time/update``, which the plugin logs) and TRL's (generate and score measured here, ``step``'s own
``time/ppo/*``). Each (method, family) runs in its own process; ``--rounds`` repeats the pair in
alternating order (ours, trl, trl, ours, ...) so that a change in the machine's load hits both.

``--paired`` runs ours at the same time as each other method instead (one core each, pinned with ``taskset``,
swapped every round) and reports, beside the medians, the median over rounds of each pair's ratio: on a VM
whose speed drifts from minute to minute (docs/speed.md), two processes that share the same minutes give a
steadier ratio than processes run one after the other.

Run (CPU)::

    python bench/bench_ppo.py --json bench/results/ppo_cpu.json        # both families, ours and trl
    python bench/bench_ppo.py --family gpt2 --iters 2 --warmup 1 --rounds 1   # smoke test
    python bench/bench_ppo.py --paired --threads 1 --iters 3 --warmup 1 --rounds 3   # 2 cores, side by side
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import string
import sys
import time
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # imported from elsewhere than bench/
    sys.path.insert(0, str(Path(__file__).resolve().parent))
# bench_sft.py imports only the stdlib at top level, so this module (and _trl_ppo.py, which imports it
# inside the TRL virtualenv) can take its helpers.
from bench_sft import MODELS, ROOT, machine_info, run_subprocess, worker_env

METHODS = ("ours", "trl", "trl_bf16")  # trl_bf16: TRL under accelerate's bf16 autocast
FAMILIES = {"gpt2": "tiny-gpt2", "t5": "tiny-t5"}
TRL_VENV = ROOT / "bench" / ".venv-trl011"
# torch pinned (an unpinned one would pull a CUDA build); transformers 4.46.3: the last 4.4x that trl
# 0.11.4 imports cleanly with; rich: imported by trl 0.11.4 but not in its requirements.
TRL_PINS = ("torch==2.13.0", "trl==0.11.4", "transformers==4.46.3", "rich")

# The workload (issue 4).
N_PROMPTS, PROMPT_LEN, RESPONSE_LEN = 64, 32, 32
PPO_EPOCHS, MINIBATCH = 4, 16
LR, ADAM_EPS = 1e-4, 1e-5
KL_COEF, KL_TARGET, KL_HORIZON = 0.1, 2.0, 10000
GAMMA, LAM, CLIPRANGE, CLIPRANGE_VALUE, VF_COEF = 1.0, 0.95, 0.2, 0.2, 0.1
REWARD_TARGET_CHARS, PENALTY = 8, -1.0


# ------------------------------------------------------------------------------------------ workload
def make_prompts(n: int, length: int, seed: int) -> list[str]:
    """``n`` fixed synthetic prompts of ASCII lowercase letters and spaces (1 byte = 1 token). Stdlib
    only: _trl_ppo.py uses it inside the TRL virtualenv."""
    rng = random.Random(seed)
    alphabet = string.ascii_lowercase + " "
    return ["".join(rng.choice(alphabet) for _ in range(length)) for _ in range(n)]


def length_score(text: str, found: bool) -> float:
    """What ours computes per response in lhp_fixed_length mode with ``LengthReward(8)``:
    ``-|len - 8| / 8`` of the text cut after the first EOS, replaced by the penalty when there is no EOS.
    Stdlib only (the TRL side uses it)."""
    return -abs(len(text) - REWARD_TARGET_CHARS) / REWARD_TARGET_CHARS if found else PENALTY


def model_config(family: str) -> dict:
    return json.loads(json.dumps(MODELS[FAMILIES[family]]))


def ours_overrides(family: str, iterations: int, precision: str = "auto") -> list[str]:
    """The Hydra overrides of the "ours" run: what a user would put on ``python train.py``."""
    cfg = model_config(family)
    model = [f"model={cfg['preset']}", f"model.name={cfg['name']}"]
    model += [f"+model.overrides.{k}={v}" for k, v in cfg["overrides"].items()]
    return [
        "algo=ppo", *model, "~reward", "+reward._target_=feedback_lm.rewards.LengthReward",
        f"+reward.target_chars={REWARD_TARGET_CHARS}",
        "algo.mode=lhp_fixed_length", f"algo.max_new_tokens={RESPONSE_LEN}", f"algo.ppo_epochs={PPO_EPOCHS}",
        f"algo.minibatch_size={MINIBATCH}", f"algo.lr={LR}", f"algo.adam_eps={ADAM_EPS}",
        "algo.schedule=constant", "algo.warmup_iterations=0", "algo.kl_controller=adaptive",
        f"algo.kl_coef={KL_COEF}", f"algo.kl_target={KL_TARGET}", f"algo.kl_horizon={KL_HORIZON}",
        f"algo.gamma={GAMMA}", f"algo.lam={LAM}", f"algo.cliprange={CLIPRANGE}",
        f"algo.cliprange_value={CLIPRANGE_VALUE}", f"algo.vf_coef={VF_COEF}", "algo.whiten_rewards=true",
        "algo.max_grad_norm=null", "algo.value_model=shared", "algo.temperature=1.0", "algo.top_k=0",
        "algo.top_p=1.0", f"algo.penalty_reward_value={PENALTY}", "algo.truncate_token=null",
        "algo.truncate_after=0", "algo.ptx_coef=0.0", "algo.ema_decay=null", "algo.reward_normalization=none",
        "trainer=cpu", f"trainer.precision={precision}", f"trainer.max_steps={iterations}", "trainer.val_check_interval=null",
        "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "run_dir=/tmp/bench_ppo_unused",
    ]


def workload(args) -> dict:
    return {"prompts_per_iteration": N_PROMPTS, "prompt_bytes": PROMPT_LEN, "response_tokens": RESPONSE_LEN,
            "ppo_epochs": PPO_EPOCHS, "minibatch_size": MINIBATCH,
            "optimizer_steps_per_iteration": PPO_EPOCHS * N_PROMPTS // MINIBATCH, "lr": LR, "adam_eps": ADAM_EPS,
            "kl": {"controller": "adaptive", "init": KL_COEF, "target": KL_TARGET, "horizon": KL_HORIZON},
            "gamma": GAMMA, "lam": LAM, "cliprange": CLIPRANGE, "cliprange_value": CLIPRANGE_VALUE,
            "vf_coef": VF_COEF, "whiten_rewards": True,
            "reward": f"LengthReward({REWARD_TARGET_CHARS}) of the text cut after the first EOS, "
                      f"{PENALTY} without EOS", "precision": {"ours": args.precision, "trl": "32-true", "trl_bf16": "accelerate bf16 autocast"}, "iterations": args.iters,
            "warmup": args.warmup, "rounds": args.rounds, "seed": args.seed, "trl_gen_batch": args.trl_gen_batch,
            "threads": args.threads}


# ------------------------------------------------------------------------------------------- workers
SPLIT_KEYS = ("time/generate", "time/forward", "time/score", "time/update")


def run_ours(args) -> dict:
    import lightning as L
    import torch
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader

    from feedback_lm.data.datamodule import TextDataset, collate_text
    from feedback_lm.malloc import keep_freed_memory
    from feedback_lm.precision import FrozenCastCache, resolve_precision
    from feedback_lm.testing import compose

    total = args.warmup + args.iters
    cfg = compose([*ours_overrides(args.family, total, args.precision), *args.ours_override])
    starts: list[float] = []
    ends: list[float] = []
    cpu_starts: list[float] = []
    cpu_ends: list[float] = []
    splits: list[dict[str, float]] = []
    checks: dict = {}

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if not checks:  # the tokenized workload, once (outside the timed window)
                ids, mask = pl_module.policy.encode_prompts(batch["prompt"])
                checks.update(prompts=len(batch["prompt"]), prompt_tokens=int(ids.shape[1]),
                              prompt_padding=not bool(mask.all()))
            cpu_starts.append(time.process_time())
            starts.append(time.perf_counter())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            ends.append(time.perf_counter())
            cpu_ends.append(time.process_time())
            m = trainer.callback_metrics
            splits.append({k: float(m[k]) for k in (*SPLIT_KEYS, "rollout/response_len", "ppo/minibatches",
                                                    "ppo/kl", "ppo/kl_coef", "rollout/score_mean")})

    rows = [{"prompt": p} for p in make_prompts(N_PROMPTS * total, PROMPT_LEN, args.seed)]
    loader = DataLoader(TextDataset(rows), batch_size=N_PROMPTS, shuffle=False, collate_fn=collate_text,
                        num_workers=0, drop_last=True)
    L.seed_everything(args.seed, verbose=False)
    module = instantiate(cfg.algo, _convert_="all")
    precision = resolve_precision(cfg.trainer)
    if cfg.malloc_keep_freed:  # as train.py's run() does
        keep_freed_memory()
    trainer = instantiate(cfg.trainer, _convert_="all", logger=False, enable_checkpointing=False,
                          callbacks=[Clock(), FrozenCastCache(cfg.frozen_cast_cache)])  # as train.py's run()
    trainer.fit(module, train_dataloaders=loader)

    for s in splits:
        if s["rollout/response_len"] != RESPONSE_LEN or s["ppo/minibatches"] != PPO_EPOCHS * N_PROMPTS // MINIBATCH:
            raise RuntimeError(f"unexpected rollout: {s}")
    params = list(module.policy.parameters())
    measured = splits[args.warmup:]
    return {**iteration_summary(starts, ends, args.warmup, cpu_starts, cpu_ends),
            "split_median_s": {k: statistics.median(s[k] for s in measured) for k in SPLIT_KEYS},
            "split_s": [{k: round(s[k], 4) for k in SPLIT_KEYS} for s in measured],
            "kl": [round(s["ppo/kl"], 4) for s in splits], "kl_coef": [round(s["ppo/kl_coef"], 5) for s in splits],
            "score_mean": [round(s["rollout/score_mean"], 4) for s in splits],
            "response_tokens": RESPONSE_LEN, "precision": precision, **checks,
            "n_params_policy": sum(p.numel() for p in params),
            "n_params_value_head": sum(p.numel() for p in module.value_head.parameters()),
            "torch_threads": torch.get_num_threads()}


def iteration_summary(starts: list[float], ends: list[float], warmup: int, cpu_starts: list[float],
                      cpu_ends: list[float]) -> dict:
    """Median and list of the measured iterations, wall clock and CPU time of the process (all its
    threads; ``time.process_time``). Stdlib only: _trl_ppo.py uses it too."""
    its = [e - s for s, e in zip(starts, ends)][warmup:]
    cpu = [e - s for s, e in zip(cpu_starts, cpu_ends)][warmup:]
    if not its or warmup < 1:
        raise RuntimeError(f"ran {len(ends)} iterations; need warmup >= 1 and at least one measured one")
    return {"measured_iterations": len(its), "iteration_s_median": statistics.median(its),
            "iteration_s": [round(t, 4) for t in its], "warmup_iteration_s": [round(e - s, 4) for s, e in
                                                                               zip(starts[:warmup], ends[:warmup])],
            "iteration_cpu_s_median": statistics.median(cpu), "iteration_cpu_s": [round(t, 4) for t in cpu],
            "wall_s": ends[-1] - ends[warmup - 1]}


def worker_main(args) -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    print("BENCH_RESULT " + json.dumps(run_ours(args)), flush=True)


# ---------------------------------------------------------------------------------------- the parent
def ensure_trl_venv(venv: Path) -> tuple[Path | None, str | None]:
    """The TRL 0.11.4 virtualenv's python, creating the venv on first use; or (None, reason)."""
    import subprocess

    py = venv / "bin" / "python"
    code = ("import trl, torch, transformers; from trl import PPOTrainer; "
            "assert trl.__version__ == '0.11.4', trl.__version__")
    check = [str(py), "-c", code]
    if py.exists() and subprocess.run(check, check=False, capture_output=True).returncode == 0:
        return py, None
    print(f"creating {venv.relative_to(ROOT)} (one-off: {', '.join(TRL_PINS)}; a few minutes) ...", flush=True)
    steps = [[sys.executable, "-m", "venv", str(venv)],
             [str(py), "-m", "pip", "install", "-q", TRL_PINS[0]],
             [str(py), "-m", "pip", "install", "-q", *TRL_PINS[1:]],
             check]
    for cmd in steps:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if proc.returncode != 0:
            lines = [ln for ln in (proc.stderr + proc.stdout).splitlines()
                     if ln.strip() and not ln.startswith("WARNING: Location")]
            return None, f"`{' '.join(cmd[-3:])}` failed: {lines[-1] if lines else 'no output'}"
    return py, None


def common_args(args, family: str) -> list[str]:
    return ["--family", family, "--iters", str(args.iters), "--warmup", str(args.warmup), "--seed", str(args.seed)]


def run_method(args, method: str, family: str, cpu: int | None = None) -> dict:
    """One (method, family) process; ``cpu``: pin it to that core (``taskset``), for ``--paired`` rounds."""
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    if method == "ours":
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", *common_args(args, family)]
        cmd += [f"--ours-override={o}" for o in args.ours_override] + [f"--precision={args.precision}"]
        return run_subprocess(pin + cmd, f"ours {family}", env=worker_env(args), timeout=args.timeout)
    py, reason = ensure_trl_venv(TRL_VENV)
    if py is None:
        return {"unavailable": reason}
    cmd = [str(py), str(ROOT / "bench" / "_trl_ppo.py"), *common_args(args, family),
           "--gen-batch", str(args.trl_gen_batch), "--mixed-precision", "bf16" if method == "trl_bf16" else "no"]
    return run_subprocess(pin + cmd, f"trl {family}", env=worker_env(args), timeout=args.timeout)


def run_pair(args, ref: str, family: str, rnd: int) -> tuple[dict, dict]:
    """``--paired``: ours and ``ref`` at the same time, one core each (swapped every round), so that both
    see the same minutes of this machine; returns (ours, ref)."""
    from concurrent.futures import ThreadPoolExecutor

    cores = (0, 1) if rnd % 2 == 0 else (1, 0)
    with ThreadPoolExecutor(2) as pool:
        ours = pool.submit(run_method, args, "ours", family, cores[0])
        theirs = pool.submit(run_method, args, ref, family, cores[1])
        return ours.result(), theirs.result()


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def combine(runs: list[dict]) -> dict:
    """Rounds of one (method, family) -> one row: median over every measured iteration of every round."""
    ok = [r for r in runs if "iteration_s" in r]
    out: dict = {"rounds": runs}
    if not ok:
        return out
    its = [t for r in ok for t in r["iteration_s"]]
    out["iteration_s_median"] = statistics.median(its)
    out["iteration_cpu_s_median"] = statistics.median(t for r in ok for t in r["iteration_cpu_s"])
    out["round_medians_s"] = [round(r["iteration_s_median"], 4) for r in ok]
    out["measured_iterations"] = len(its)
    split = [s for r in ok for s in r.get("split_s", [])]
    if split:
        out["split_median_s"] = {k: statistics.median(s[k] for s in split) for k in split[0]}
    return out


def print_table(results: dict, info: dict, args) -> None:
    print(f"\nPPO iteration time: {N_PROMPTS} prompts x {PROMPT_LEN} bytes, {RESPONSE_LEN} sampled tokens, "
          f"{PPO_EPOCHS} epochs x minibatch {MINIBATCH}, ours {args.precision} (trl fp32, trl_bf16 autocast), cpu ({info['device_name']}, "
          f"{info['torch_threads']} threads); median of {args.iters} iterations after {args.warmup} warmup, "
          f"x {args.rounds} round(s)")
    print(f"{'family':<6} {'method':<8} {'s/iter':>8} {'rounds':>18} {'speedup':>8} {'cpu s/iter':>10} "
          f"{'cpu speedup':>11}  split (median s)")
    for family, rows in results.items():
        trl = rows.get("trl", {}).get("iteration_s_median")
        trl_cpu = rows.get("trl", {}).get("iteration_cpu_s_median")
        for method, r in rows.items():
            if "iteration_s_median" not in r:
                errs = [x.get("unavailable") or x.get("error", "?") for x in r["rounds"]]
                print(f"{family:<6} {method:<8} failed ({errs[0].splitlines()[0] if errs else '?'})")
                continue
            sp = f"{trl / r['iteration_s_median']:8.2f}" if trl else f"{'-':>8}"
            split = "  ".join(f"{k.split('/', 1)[1]} {v:.3f}" for k, v in r.get("split_median_s", {}).items())
            rounds = ",".join(f"{x:.2f}" for x in r["round_medians_s"])
            cpu = r["iteration_cpu_s_median"]
            csp = f"{trl_cpu / cpu:11.2f}" if trl_cpu else f"{'-':>11}"
            print(f"{family:<6} {method:<8} {r['iteration_s_median']:8.3f} {rounds:>18} {sp} {cpu:10.3f} {csp}  "
                  f"{split}")
    for family, rows in results.items():
        for method, r in rows.items():
            for x in r["rounds"]:
                if "error" in x:
                    print(f"\n[{method} {family}] {x['error']}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", default="gpt2,t5", help="comma-separated subset of gpt2,t5")
    p.add_argument("--which", default="ours,trl,trl_bf16", help="comma-separated subset of ours,trl,trl_bf16")
    p.add_argument("--iters", type=int, default=5, help="measured iterations per process (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="iterations run first and dropped (default 2, >= 1)")
    p.add_argument("--rounds", type=int, default=2,
                   help="processes per (method, family), in alternating order (default 2)")
    p.add_argument("--trl-gen-batch", type=int, default=N_PROMPTS,
                   help="TRL generate() batch size (default 64 = one batch; TRL's own default is 4)")
    p.add_argument("--ours-override", action="append", default=[],
                   help="an extra Hydra override for ours (repeatable), to try a change, e.g. "
                        "+model.overrides.activation_function=gelu_pytorch_tanh")
    p.add_argument("--precision", default="auto",
                   help="ours' trainer.precision: auto (bf16-mixed where the CPU has native bf16), 32-true, "
                        "bf16-mixed (trl runs fp32, trl_bf16 under accelerate's bf16 autocast)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="OMP/MKL threads of every process (default: torch's default, one per core)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per process")
    p.add_argument("--paired", action="store_true",
                   help="run ours at the same time as each other method, one core each (taskset), and report "
                        "the median of the rounds' ratios: robust to a machine whose speed drifts (docs/speed.md)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.warmup < 1 or args.iters < 1:
        p.error("--warmup and --iters must be >= 1")
    if args.worker:
        args.family = args.family.strip()
        worker_main(args)
        return
    families = [f.strip() for f in args.family.split(",") if f.strip()]
    which = [m.strip() for m in args.which.split(",") if m.strip()]
    bad = sorted(set(families) - set(FAMILIES)) + sorted(set(which) - set(METHODS))
    if bad:
        p.error(f"unknown {bad}; families {list(FAMILIES)}, methods {list(METHODS)}")

    args.device = "cpu"
    info = machine_info(args)
    out: dict = {"machine": info, "workload": workload(args),
                 "model_configs": {f: model_config(f) for f in families},
                 "ours_overrides": {f: [*ours_overrides(f, args.warmup + args.iters, args.precision), *args.ours_override]
                                    for f in families},
                 "load_average": {"start": load_average()}, "order": []}
    raw: dict[str, dict[str, list[dict]]] = {f: {m: [] for m in which} for f in families}
    t0 = time.perf_counter()
    pair_ratios: dict[str, dict[str, list[float]]] = {f: {} for f in families}
    for family in families:
        for rnd in range(args.rounds):
            if args.paired:
                for ref in [m for m in which if m != "ours"]:
                    la = load_average()
                    print(f"[{family}] round {rnd + 1}/{args.rounds}: ours beside {ref} (load {la}) ...", flush=True)
                    r_ours, r_ref = run_pair(args, ref, family, rnd)
                    for method, r in (("ours", r_ours), (ref, r_ref)):
                        r.update(load_average_before=la, load_average_after=load_average(), paired_with=ref)
                        raw[family][method].append(r)
                        out["order"].append(f"{family}:{method}|{ref}")
                    if "iteration_s_median" in r_ours and "iteration_s_median" in r_ref:
                        ratio = r_ref["iteration_s_median"] / r_ours["iteration_s_median"]
                        pair_ratios[family].setdefault(ref, []).append(ratio)
                        print(f"    ours {r_ours['iteration_s_median']:.3f} s/iter, {ref} "
                              f"{r_ref['iteration_s_median']:.3f}: {ratio:.2f}x", flush=True)
                continue
            order = which if rnd % 2 == 0 else which[::-1]
            for method in order:
                la = load_average()
                print(f"[{family}] round {rnd + 1}/{args.rounds}: {method} (load {la}) ...", flush=True)
                r = run_method(args, method, family)
                r["load_average_before"] = la
                r["load_average_after"] = load_average()
                if "iteration_s_median" in r:
                    print(f"    median {r['iteration_s_median']:.3f} s/iter {r['iteration_s']}", flush=True)
                raw[family][method].append(r)
                out["order"].append(f"{family}:{method}")
    out["total_s"] = time.perf_counter() - t0
    out["load_average"]["end"] = load_average()
    results = {f: {m: combine(runs) for m, runs in rows.items()} for f, rows in raw.items()}
    for family, rows in results.items():
        for ref in ("trl", "trl_bf16"):
            theirs = rows.get(ref, {}).get("iteration_s_median")
            ours = rows.get("ours", {}).get("iteration_s_median")
            if theirs and ours:
                rows[f"speedup_ours_vs_{ref}"] = theirs / ours
                rows[f"cpu_speedup_ours_vs_{ref}"] = (rows[ref]["iteration_cpu_s_median"]
                                                      / rows["ours"]["iteration_cpu_s_median"])
        for ref, ratios in pair_ratios[family].items():  # --paired: the ratio of each round's pair
            rows[f"paired_speedup_ours_vs_{ref}"] = statistics.median(ratios)
            rows[f"paired_speedups_ours_vs_{ref}"] = [round(x, 3) for x in ratios]
    out["results"] = results
    print_table({f: {m: r for m, r in rows.items() if isinstance(r, dict)} for f, rows in results.items()},
                info, args)
    for f, rows in results.items():
        for ref, target in (("trl", 2.0), ("trl_bf16", 1.3)):
            if f"speedup_ours_vs_{ref}" in rows:
                print(f"{f}: ours is {rows[f'speedup_ours_vs_{ref}']:.2f}x {ref} in wall time, "
                      f"{rows[f'cpu_speedup_ours_vs_{ref}']:.2f}x in CPU time (target >= {target}x)")
            if f"paired_speedup_ours_vs_{ref}" in rows:
                print(f"{f}: paired rounds (ours beside {ref}): median {rows[f'paired_speedup_ours_vs_{ref}']:.2f}x "
                      f"{rows[f'paired_speedups_ours_vs_{ref}']} (target >= {target}x)")
    print(f"load average: start {out['load_average']['start']}, end {out['load_average']['end']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    if any("error" in x for rows in raw.values() for runs in rows.values() for x in runs):
        sys.exit(1)


if __name__ == "__main__":
    main()
