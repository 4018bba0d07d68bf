"""Reward-model training throughput: our ``RewardModel`` plugin under a real ``lightning.Trainer``
("ours"), a plain PyTorch loop doing the same steps with the same module ("plain"), and TRL's
``RewardTrainer`` ("trl"), side by side; then the time of one training step against K, the number of
responses ranked per prompt.

Part ``pairs`` (pairwise, K=2 = Bradley-Terry; see bench/README.md for the results):

* **ours**: ``plugins.reward_model.RewardModel(loss="ranking")`` (builds the LM and the scalar head in
  ``configure_model``, one forward over every (prompt, response) of the batch, logs ``train/loss``)
  fitted by ``lightning.Trainer`` with logger, checkpointing, progress bar, model summary and
  validation switched off; batches of 32 ``Comparison``s with 2 responses each (``collate_fn=list``, as
  ``ComparisonDataModule`` batches them).
* **plain**: the same ``RewardModel`` instance used directly: ``configure_model()``, then per step
  ``_batch_rewards`` -> ``ranking_loss`` -> backward -> ``build_adamw`` step -> constant
  ``build_scheduler`` step -> ``zero_grad``. The floor that ours is compared with.
* **trl**: TRL 1.16 ``RewardTrainer`` on the same pairs (GPT-2 for sequence classification with
  ``num_labels=1``, byte tokenizer, explicit-prompt preference rows), run by ``bench/_trl_rm.py`` in the
  virtualenv ``bench/.venv-trl`` that bench_sft.py creates and this script reuses.

Every sequence is a 32-byte prompt + a 32-byte response + EOS = 65 tokens, two per pair; the workers
check those counts (and the absence of padding) before the measured steps.

Part ``k``: ours (and/or plain, whichever ``--which`` names) with the ranking loss over a strict
ranking of K responses, K in {2, 4, 6, 8, 9}, at a fixed number of prompts per step (8). One
training step forwards K sequences per prompt (InstructGPT §3.5), so its time should grow like K,
not like the C(K,2) pairs the loss sums over; the workers count the sequences actually forwarded.

Each (method, K) runs in its own subprocess, one after the other; timing as in bench_sft.py (the first
``--warmup`` steps dropped, throughput over full step cycles, in-step times kept).

Run (CPU)::

    python bench/bench_rm.py                                          # both parts, ours, plain, trl
    python bench/bench_rm.py --part pairs --json bench/results/rm_cpu.json
    python bench/bench_rm.py --part k --which ours --json bench/results/rm_k_cpu.json
    python bench/bench_rm.py --steps 2 --warmup 1                     # smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import random
import string
import sys
import time
from contextlib import nullcontext
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # imported from elsewhere than bench/
    sys.path.insert(0, str(Path(__file__).resolve().parent))
# bench_sft.py imports only the stdlib at top level, so this module (and _trl_rm.py, which imports it
# inside the TRL virtualenv) can take its helpers.
from bench_sft import (
    MODELS,
    ROOT,
    TRL_VENV,
    StepClock,
    ensure_trl_venv,
    machine_info,
    precision,
    run_subprocess,
    worker_env,
)

METHODS = ("ours", "plain", "trl")
PARTS = ("pairs", "k", "all")
PROMPT_LEN, RESPONSE_LEN = 32, 32  # bytes = tokens; each sequence also gets EOS
ADAM_EPS = 1e-5  # RewardModel's default (LHP); TRL gets the same
KS = (2, 4, 6, 8, 9)
K_PROMPTS = 8


# ------------------------------------------------------------------------------------------ workload
def model_config() -> dict:
    return json.loads(json.dumps(MODELS["tiny-gpt2"]))


def tokens_per_sequence() -> int:
    return PROMPT_LEN + RESPONSE_LEN + 1


def make_comparison_rows(n: int, k: int, prompt_len: int, response_len: int, seed: int) -> list[dict]:
    """``n`` fixed synthetic prompts with ``k`` distinct responses each, ASCII lowercase letters and spaces
    (1 byte = 1 token). Response 0 is the best, then 1, ... (a strict ranking). Stdlib only: _trl_rm.py
    uses it inside the TRL virtualenv."""
    rng = random.Random(seed)
    alphabet = string.ascii_lowercase + " "
    rows = []
    for _ in range(n):
        prompt = "".join(rng.choice(alphabet) for _ in range(prompt_len))
        responses: list[str] = []
        while len(responses) < k:
            # Ends in a letter: TRL appends EOS as the text "</s>", whose lstrip would eat a space before it.
            r = "".join(rng.choice(alphabet) for _ in range(response_len - 1))
            r += rng.choice(string.ascii_lowercase)
            if r not in responses:
                responses.append(r)
        rows.append({"prompt": prompt, "responses": responses})
    return rows


def comparisons(rows: list[dict]) -> list:
    from feedback_lm.data.comparisons import Comparison

    return [Comparison(prompt=r["prompt"], responses=r["responses"],
                       tiers=[[i] for i in range(len(r["responses"]))]) for r in rows]


def workload(args) -> dict:
    return {"model": "tiny-gpt2", "prompt_tokens": PROMPT_LEN, "response_tokens": RESPONSE_LEN + 1,
            "tokens_per_sequence": tokens_per_sequence(), "pairs_batch": args.batch,
            "k_prompts": args.k_prompts, "ks": list(args.ks), "steps": args.steps, "warmup": args.warmup,
            "device": args.device, "precision": precision(args), "lr": args.lr, "adam_eps": ADAM_EPS,
            "seed": args.seed, "loss": "ranking", "grad_clip": None}


# ------------------------------------------------------------------------------------------- workers
class SequenceCounter:
    """A forward pre-hook on ``RewardModel.policy``: counts the sequences each forward takes and checks,
    on the first call (a warmup step), that every one is prompt + response + EOS tokens with no padding."""

    def __init__(self, policy, k: int, prompts: int):
        self.eos = policy.eos_token_id
        self.k, self.prompts = k, prompts
        self.sequences: list[int] = []
        self.handle = policy.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        p_ids, p_mask = kwargs["prompt_ids"], kwargs["prompt_mask"]
        r_ids, r_mask = kwargs["response_ids"], kwargs["response_mask"]
        self.sequences.append(int(p_ids.shape[0]))
        if len(self.sequences) == 1:
            want = (self.prompts * self.k, PROMPT_LEN, RESPONSE_LEN + 1)
            got = (p_ids.shape[0], p_ids.shape[1], r_ids.shape[1])
            padded = not bool(p_mask.all() and r_mask.all())
            if got != want or padded or not bool((r_ids[:, -1] == self.eos).all()):
                raise RuntimeError(f"tokenized batch is (sequences, prompt, response) = "
                                   f"{tuple(map(int, got))} (padding: {padded}), expected {want}, "
                                   f"no padding, EOS last")

    def summary(self) -> dict:
        seen = sorted(set(self.sequences))
        return {"sequences_per_step": seen[0] if len(seen) == 1 else seen}


def run_ours(args, rows: list[dict]) -> dict:
    import lightning as L
    import torch

    from feedback_lm.malloc import keep_freed_memory

    cuda = args.device == "cuda"
    keep_freed_memory()  # as train.py's run() does (conf/train.yaml malloc_keep_freed)
    clock = StepClock(cuda)
    counter: list[SequenceCounter] = []

    class Clock(L.Callback):
        def on_train_start(self, trainer, pl_module):
            counter.append(SequenceCounter(pl_module.policy, args.k, args.batch))

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            clock.begin()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.end()

    torch.manual_seed(args.seed)
    module = new_module(args)
    trainer = L.Trainer(accelerator="gpu" if cuda else "cpu", devices=1, max_steps=args.warmup + args.steps,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        precision=precision(args), callbacks=[Clock()])
    trainer.fit(module, train_dataloaders=loader(rows, args.batch))
    return {**model_sizes(module), **counter[0].summary(), **clock_summary(clock, args)}


def run_plain(args, rows: list[dict]) -> dict:
    import torch

    from feedback_lm.optim import build_adamw, build_scheduler
    from plugins.reward_model import ranking_loss

    cuda = args.device == "cuda"
    device = torch.device(args.device)
    clock = StepClock(cuda)
    torch.manual_seed(args.seed)
    module = new_module(args)
    with torch.device(device):  # built directly on the device, as Lightning's configure_model does
        module.configure_model()
    module.to(device).train()
    counter = SequenceCounter(module.policy, args.k, args.batch)
    total = args.warmup + args.steps
    # RewardModel.configure_optimizers with the arguments new_module gives it.
    opt = build_adamw(module.parameters(), args.lr, 0.0, eps=ADAM_EPS)
    sched = build_scheduler(opt, total, "constant", 0, 0.0)
    bf16 = precision(args) == "bf16-mixed"  # what Lightning's bf16-mixed does: autocast the training step
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    for step, batch in enumerate(loader(rows, args.batch)):
        if step == total:
            break
        clock.begin()
        with autocast:
            loss = ranking_loss(module._batch_rewards(batch), [c.tiers for c in batch])
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        clock.end()
    return {**model_sizes(module), **counter.summary(), **clock_summary(clock, args)}


def new_module(args):
    from plugins.reward_model import RewardModel

    # No gradient clipping (TRL runs with max_grad_norm=0 too); constant LR; fp32 weights.
    return RewardModel(policy=model_config(), loss="ranking", lr=args.lr, weight_decay=0.0, adam_eps=ADAM_EPS,
                       schedule="constant", warmup_steps=0, normalize="none", max_grad_norm=None)


def model_sizes(module) -> dict:
    params = list(module.parameters())
    return {"n_params": sum(p.numel() for p in params),
            "n_trainable": sum(p.numel() for p in params if p.requires_grad)}


def loader(rows: list[dict], batch: int):
    from torch.utils.data import DataLoader

    from feedback_lm.data.datamodule import TextDataset

    # What ComparisonDataModule.train_dataloader does (without shuffling): a batch is a list[Comparison].
    return DataLoader(TextDataset(comparisons(rows)), batch_size=batch, shuffle=False, collate_fn=list,
                      num_workers=0, drop_last=True)


def clock_summary(clock: StepClock, args) -> dict:
    out = clock.summary(args.warmup, args.batch, args.k * tokens_per_sequence())
    # StepClock counts "samples" = batch elements = prompts (pairs when K=2).
    out["prompts_per_s"] = out.pop("samples_per_s")
    return out


def worker_main(args) -> None:
    """Run one (method, K) in this process and print its result line."""
    import logging
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    n = args.batch * (args.warmup + args.steps)
    rows = make_comparison_rows(n, args.k, PROMPT_LEN, RESPONSE_LEN, args.seed)
    fn = {"ours": run_ours, "plain": run_plain}[args.worker]
    result = fn(args, rows)
    result.update(k=args.k, prompts_per_step=args.batch, torch_threads=torch.get_num_threads())
    if args.device == "cuda":
        result["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print("BENCH_RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------- the parent
def worker_cmd(args, method: str, k: int, batch: int) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", method, "--k", str(k), "--batch",
            str(batch), "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device,
            "--lr", str(args.lr), "--seed", str(args.seed), "--precision", precision(args)]


def run_trl(args) -> dict:
    if args.device != "cpu":
        return {"unavailable": "GPU mode: the TRL venv holds a CPU-only torch"}
    py, reason = ensure_trl_venv(TRL_VENV)
    if py is None:
        return {"unavailable": reason}
    cmd = [str(py), str(ROOT / "bench" / "_trl_rm.py"), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--batch", str(args.batch), "--prompt-len", str(PROMPT_LEN),
           "--response-len", str(RESPONSE_LEN), "--lr", str(args.lr), "--adam-eps", str(ADAM_EPS),
           "--seed", str(args.seed)]
    result = run_subprocess(cmd, "trl", env=worker_env(args))
    if "samples_per_s" in result:  # _trl_rm.py uses bench_sft's field names: a sample is a pair there
        result["prompts_per_s"] = result.pop("samples_per_s")
    return result


def add_pair_fields(r: dict) -> None:
    if "prompts_per_s" in r:
        r["pairs_per_s"] = r["prompts_per_s"]


def run_pairs(args, which: list[str]) -> dict[str, dict]:
    results: dict[str, dict] = {}
    for method in which:
        print(f"[pairs] running {method} ...", flush=True)
        if method == "trl":
            r = run_trl(args)
        else:
            r = run_subprocess(worker_cmd(args, method, 2, args.batch), method, env=worker_env(args))
        add_pair_fields(r)
        results[method] = r
    for base in ("plain", "trl"):
        ref = results.get(base, {}).get("pairs_per_s")
        for r in results.values():
            if ref and "pairs_per_s" in r:
                r[f"vs_{base}"] = r["pairs_per_s"] / ref
    return results


def run_k(args, which: list[str]) -> dict[str, dict]:
    results: dict[str, dict] = {}
    for method in [m for m in which if m in ("ours", "plain")]:
        rows: dict[str, dict] = {}
        for k in args.ks:
            print(f"[k] running {method} K={k} ...", flush=True)
            cmd = worker_cmd(args, method, k, args.k_prompts)
            r = run_subprocess(cmd, f"{method} K={k}", env=worker_env(args))
            if "step_ms_median" in r:
                r["pairs_per_prompt"] = math.comb(k, 2)
                r["ms_per_prompt"] = r["step_ms_median"] / args.k_prompts
                r["ms_per_response"] = r["step_ms_median"] / (args.k_prompts * k)
            rows[str(k)] = r
        base = rows.get(str(args.ks[0]), {}).get("step_ms_median")
        for k, r in rows.items():
            if base and "step_ms_median" in r:
                r["time_ratio"] = r["step_ms_median"] / base
        results[method] = rows
    return results


def print_pairs(results: dict, args, info: dict) -> None:
    t = tokens_per_sequence()
    print(f"\nReward-model training throughput (pairwise, K=2): tiny-gpt2, batch {args.batch} pairs x "
          f"2 sequences x {t} tokens ({PROMPT_LEN} prompt + {RESPONSE_LEN} response + EOS), {args.device} "
          f"({info['device_name']}, {info['torch_threads']} threads), {precision(args)}; "
          f"{args.steps} steps after {args.warmup} warmup")
    print(f"{'method':<7} {'pairs/s':>9} {'tokens/s':>10} {'step ms':>9} {'vs plain':>9} {'vs trl':>8}")
    for name, r in results.items():
        if "pairs_per_s" not in r:
            why = r.get("unavailable") or r.get("error", "?").splitlines()[0]
            print(f"{name:<7} {'unavailable' if 'unavailable' in r else 'failed'} ({why})")
            continue
        vp = f"{r['vs_plain']:9.3f}" if "vs_plain" in r else f"{'-':>9}"
        vt = f"{r['vs_trl']:8.3f}" if "vs_trl" in r else f"{'-':>8}"
        print(f"{name:<7} {r['pairs_per_s']:9.1f} {r['tokens_per_s']:10.0f} {r['step_ms_median']:9.1f} "
              f"{vp} {vt}")
    ours = results.get("ours", {}).get("pairs_per_s")
    if ours and results.get("plain", {}).get("pairs_per_s"):
        print(f"ours overhead vs plain: {1 - ours / results['plain']['pairs_per_s']:.1%} (1 - ours/plain)")
    if ours and results.get("trl", {}).get("pairs_per_s"):
        print(f"ours / trl: {ours / results['trl']['pairs_per_s']:.2f}x")


def print_k(results: dict, args, info: dict) -> None:
    k0 = args.ks[0]
    for method, rows in results.items():
        print(f"\nTime vs K ({method}): ranking loss over a strict ranking of K responses, "
              f"{args.k_prompts} prompts per step, {tokens_per_sequence()} tokens per sequence, "
              f"{args.device} ({info['torch_threads']} threads); median in-step time of {args.steps} steps "
              f"after {args.warmup} warmup")
        print(f"{'K':>3} {'C(K,2)':>6} {'seqs/step':>9} {'step ms':>9} {'ms/prompt':>10} {'ms/resp':>8} "
              f"{f't/t({k0})':>8} {f'K/{k0}':>6} {f'C/C({k0})':>8}")
        for k in args.ks:
            r = rows.get(str(k), {})
            if "step_ms_median" not in r:
                print(f"{k:>3} failed ({r.get('error', '?').splitlines()[0]})")
                continue
            ratio = f"{r['time_ratio']:8.2f}" if "time_ratio" in r else f"{'-':>8}"
            print(f"{k:>3} {math.comb(k, 2):>6} {r['sequences_per_step']!s:>9} {r['step_ms_median']:9.1f} "
                  f"{r['ms_per_prompt']:10.2f} {r['ms_per_response']:8.2f} "
                  f"{ratio} {k / k0:6.2f} {math.comb(k, 2) / math.comb(k0, 2):8.2f}")


def parse_ks(text: str) -> tuple[int, ...]:
    ks = tuple(int(x) for x in text.split(",") if x.strip())
    if not ks or min(ks) < 2:
        raise argparse.ArgumentTypeError("--ks needs integers >= 2, e.g. 2,4,6,8,9")
    return ks


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=PARTS, default="all", help="pairs (vs TRL), k (time vs K) or all")
    p.add_argument("--steps", type=int, default=30, help="measured steps (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="steps run first and not measured (default 5, >= 1)")
    p.add_argument("--batch", type=int, default=32, help="pairs per step in part pairs (default 32)")
    p.add_argument("--k-prompts", type=int, default=K_PROMPTS, help="prompts per step in part k (default 8)")
    p.add_argument("--ks", type=parse_ks, default=KS,
                   help="responses per prompt in part k (default 2,4,6,8,9)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--which", default="ours,plain,trl",
                   help="comma-separated subset of ours,plain,trl (part k runs the ours/plain ones)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--precision", default=None,
                   help="ours and plain: 32-true, bf16-mixed or auto (bf16-mixed where the CPU has native bf16); "
                        "default 32-true on the CPU (TRL runs fp32, as it does by default)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="OMP/MKL threads of every process (default: torch's default, one per core)")
    p.add_argument("--worker", choices=["ours", "plain"], help=argparse.SUPPRESS)
    p.add_argument("--k", type=int, default=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        p.error("--warmup and --steps must be >= 1 (timing starts at the end of the last warmup step)")
    if args.worker:
        worker_main(args)
        return
    which = [m.strip() for m in args.which.split(",") if m.strip()]
    bad = sorted(set(which) - set(METHODS))
    if bad:
        p.error(f"unknown method(s) {bad}; choose from {list(METHODS)}")
    if args.part == "k" and not {"ours", "plain"} & set(which):
        p.error("--part k times ours and/or plain; TRL's RewardTrainer is pairwise only")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda but torch sees no CUDA device")

    info = machine_info(args)
    out: dict = {"machine": info, "workload": workload(args), "model_config": model_config()}
    t0 = time.perf_counter()
    if args.part in ("pairs", "all"):
        out["pairs"] = run_pairs(args, which)
    if args.part in ("k", "all"):
        out["k"] = run_k(args, which)
    out["total_s"] = time.perf_counter() - t0
    if "pairs" in out:
        print_pairs(out["pairs"], args, info)
    if "k" in out:
        print_k(out["k"], args, info)
    errors = [(name, r["error"]) for name, r in out.get("pairs", {}).items() if "error" in r]
    errors += [(f"{m} K={k}", r["error"]) for m, rows in out.get("k", {}).items() for k, r in rows.items()
               if "error" in r]
    for name, err in errors:
        print(f"\n[{name}] {err}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
