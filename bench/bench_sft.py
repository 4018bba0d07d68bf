"""SFT training throughput, three ways side by side: our SFT plugin under a real ``lightning.Trainer``
("ours"), a plain PyTorch loop doing the same steps ("plain"), and TRL's ``SFTTrainer`` ("trl").

What each one runs (see bench/README.md for the results):

* **ours**: ``plugins.sft.SFT`` (builds the model in ``configure_model``, tokenizes text batches through
  ``Policy.encode_batch``, logs ``train/loss`` and ``train/tokens``) fitted by ``lightning.Trainer``
  with logger, checkpointing, progress bar, model summary and validation switched off.
* **plain**: the same model (``Policy.from_config``), the same text batches from the same DataLoader,
  ``Policy.encode_batch`` -> forward -> ``plugins.sft.sft_loss`` -> backward -> ``build_adamw`` step
  -> constant ``build_scheduler`` step -> ``zero_grad``. The floor that ours is compared with.
* **trl**: TRL 1.16 ``SFTTrainer`` on the same workload (tiny GPT-2 from config, byte tokenizer,
  prompt-completion rows, so completion-only loss), run by ``bench/_trl_sft.py`` inside its own
  virtualenv ``bench/.venv-trl`` (created on first use: a CPU torch from the local wheel, then trl).

Each method runs in its own subprocess (fresh allocator, fresh CUDA context), one after the other.
Only steady-state steps count: the first ``--warmup`` steps (allocator growth, torch.compile) are run
and dropped. Throughput is measured over full step cycles, from the end of the last warmup step to the
end of the last measured step, so it includes fetching and collating the batch, tokenizing, and every
framework hook between steps; the time inside the steps alone (``in_step_s``) is reported too.
Tokens are counted the same way for all three: prompt + response + EOS per sample.

Run (CPU, the default workload)::

    python bench/bench_sft.py                                  # ours, plain, trl; 30 steps after 5 warmup
    python bench/bench_sft.py --model tiny-t5 --which ours,plain
    python bench/bench_sft.py --steps 2 --warmup 1 --which ours,plain   # smoke test

GPU (gpt2-large architecture, random weights, bf16-mixed, fused AdamW; TRL is skipped there)::

    python bench/bench_sft.py --device cuda --shape gpt2-large --which ours,plain [--compile]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import statistics
import string
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make feedback_lm/ and plugins/ importable
    sys.path.insert(0, str(ROOT))

METHODS = ("ours", "plain", "trl")
RESULT_MARK = "BENCH_RESULT "  # workers print one line "BENCH_RESULT {json}" on stdout
TRL_VENV = ROOT / "bench" / ".venv-trl"
TRL_PINS = ("torch==2.13.0", "trl==1.16.0")  # torch pinned: an unpinned one would pull a CUDA build
# Peak dense bf16 tensor-core FLOP/s (no sparsity) by device-name substring, for MFU.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}

# Workloads. Sizes of the tiny shape follow the lead's brief: 4-layer 256-wide GPT-2 (or a 2+2-layer
# T5 of the same width) on 64-byte prompts + 32-byte responses.
MODELS = {
    "tiny-gpt2": {"name": "bench-gpt2", "preset": "tiny-gpt2", "tokenizer": "byte", "attention": "eager",
                  "overrides": {"n_layer": 4, "n_embd": 256, "n_head": 4}},  # attention: as conf/model/tiny-*.yaml
    "tiny-t5-default": {"name": "tiny-t5", "preset": "tiny-t5", "tokenizer": "byte", "attention": "eager",
                        "overrides": {}},  # train.py's
    "tiny-t5": {"name": "bench-t5", "preset": "tiny-t5", "tokenizer": "byte", "attention": "eager",
                "overrides": {"d_model": 256, "d_ff": 1024, "num_layers": 2, "num_decoder_layers": 2,
                              "num_heads": 4, "d_kv": 64}},
    # gpt2-large's architecture with random weights. The byte tokenizer only ever produces ids < 384;
    # vocab_size 50257 keeps the embedding and LM-head cost of the real model.
    "gpt2-large": {"name": "bench-gpt2-large", "preset": "tiny-gpt2", "tokenizer": "byte",
                   "overrides": {"n_layer": 36, "n_embd": 1280, "n_head": 20, "n_positions": 1024,
                                 "vocab_size": 50257}},
}
SHAPES = {  # prompt chars, response chars (+ EOS), default batch
    "tiny": (64, 32, 32),
    "gpt2-large": (256, 255, 16),
}


# ------------------------------------------------------------------------------------------ workload
def model_config(args) -> dict:
    key = "gpt2-large" if args.shape == "gpt2-large" else args.model
    cfg = json.loads(json.dumps(MODELS[key]))
    cfg["compile"] = bool(args.compile)
    return cfg


def make_rows(n: int, prompt_len: int, response_len: int, seed: int) -> list[dict[str, str]]:
    """``n`` fixed synthetic rows of ASCII lowercase letters and spaces (1 byte = 1 token)."""
    rng = random.Random(seed)
    alphabet = string.ascii_lowercase + " "
    rows = []
    for _ in range(n):
        prompt = "".join(rng.choice(alphabet) for _ in range(prompt_len))
        # The response ends in a letter: TRL appends EOS as text ("</s>"), and that token's lstrip would
        # eat a space before it, making the sample one token shorter.
        response = "".join(rng.choice(alphabet) for _ in range(response_len - 1))
        response += rng.choice(string.ascii_lowercase)
        rows.append({"prompt": prompt, "response": response, "target": response})
    return rows


def workload(args) -> dict:
    prompt_len, response_len, _ = SHAPES[args.shape]
    return {"shape": args.shape, "model": "gpt2-large" if args.shape == "gpt2-large" else args.model,
            "batch": args.batch, "prompt_tokens": prompt_len, "response_tokens": response_len + 1,
            "tokens_per_sample": prompt_len + response_len + 1, "steps": args.steps, "warmup": args.warmup,
            "device": args.device, "precision": precision(args), "adam": args.adam, "compile": bool(args.compile),
            "lr": args.lr, "seed": args.seed}


def precision(args) -> str:
    """``--precision`` (``auto`` resolved as ``trainer.precision=auto`` would be); by default bf16-mixed on
    the GPU and 32-true on the CPU, as the recorded results ran."""
    value = getattr(args, "precision", None) or ("bf16-mixed" if args.device == "cuda" else "32-true")
    if value == "auto":
        from feedback_lm.precision import auto_precision

        value = auto_precision("gpu" if args.device == "cuda" else "cpu")
    return value


# ----------------------------------------------------------------------------------------- the clock
class StepClock:
    """``perf_counter`` stamps at the start and end of each step, synchronising CUDA first."""

    def __init__(self, cuda: bool):
        import torch

        self._sync = torch.cuda.synchronize if cuda else (lambda: None)
        self.starts: list[float] = []
        self.ends: list[float] = []

    def begin(self) -> None:
        self._sync()
        self.starts.append(time.perf_counter())

    def end(self) -> None:
        self._sync()
        self.ends.append(time.perf_counter())

    def summary(self, warmup: int, batch: int, tokens_per_sample: int) -> dict:
        n = len(self.ends) - warmup
        if n < 1 or warmup < 1:
            raise RuntimeError(f"ran {len(self.ends)} steps; need warmup >= 1 and at least one measured step")
        wall = self.ends[-1] - self.ends[warmup - 1]  # full cycles: data, hooks, step
        steps = [e - s for s, e in zip(self.starts[warmup:], self.ends[warmup:])]
        return {"measured_steps": n, "wall_s": wall, "in_step_s": sum(steps),
                "step_ms_median": 1e3 * statistics.median(steps),
                "step_ms": [round(1e3 * t, 2) for t in steps],
                "samples_per_s": n * batch / wall, "tokens_per_s": n * batch * tokens_per_sample / wall}


# ------------------------------------------------------------------------------------------- workers
def run_ours(args, cfg: dict, rows: list[dict]) -> dict:
    import lightning as L
    import torch

    from feedback_lm.malloc import keep_freed_memory
    from plugins.sft import SFT

    cuda = args.device == "cuda"
    keep_freed_memory()  # as train.py's run() does (conf/train.yaml malloc_keep_freed)
    clock = StepClock(cuda)

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            clock.begin()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.end()

    torch.manual_seed(args.seed)
    module = SFT(policy=cfg, lr=args.lr, schedule="constant", warmup_steps=0)
    trainer = L.Trainer(accelerator="gpu" if cuda else "cpu", devices=1, max_steps=args.warmup + args.steps,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        precision=precision(args), callbacks=[Clock()])
    trainer.fit(module, train_dataloaders=loader(rows, args.batch))
    return {"n_params": sum(p.numel() for p in module.policy.parameters()), **clock_summary(clock, args)}


def run_plain(args, cfg: dict, rows: list[dict]) -> dict:
    import torch

    from feedback_lm.optim import build_adamw, build_scheduler
    from feedback_lm.policy import Policy
    from plugins.sft import sft_loss

    cuda = args.device == "cuda"
    device = torch.device(args.device)
    clock = StepClock(cuda)
    torch.manual_seed(args.seed)
    with torch.device(device):  # built directly on the device, as Lightning's configure_model does
        policy = Policy.from_config(cfg)
    policy.to(device).train()
    total = args.warmup + args.steps
    # The SFT plugin's optimizer and schedule with the arguments the "ours" run gives it.
    opt = build_adamw(policy.parameters(), args.lr, 0.0, (0.9, 0.999))
    sched = build_scheduler(opt, total, "constant", 0, 0.1)
    bf16 = precision(args) == "bf16-mixed"  # what Lightning's bf16-mixed does: autocast the forward
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    for step, batch in enumerate(loader(rows, args.batch)):
        if step == total:
            break
        clock.begin()
        enc = policy.encode_batch(batch["prompt"], batch["response"], device)
        with autocast:
            loss = sft_loss(policy(**enc).logits, enc["response_ids"], enc["response_mask"])
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        clock.end()
    return {"n_params": sum(p.numel() for p in policy.parameters()), **clock_summary(clock, args)}


def loader(rows: list[dict], batch: int):
    from torch.utils.data import DataLoader

    from feedback_lm.data.datamodule import TextDataset, collate_text

    return DataLoader(TextDataset(rows), batch_size=batch, shuffle=False, collate_fn=collate_text,
                      num_workers=0, drop_last=True)


def clock_summary(clock: StepClock, args) -> dict:
    return clock.summary(args.warmup, args.batch, workload(args)["tokens_per_sample"])


def worker_main(args) -> None:
    """Run one method in this process and print its result line."""
    import logging
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    prompt_len, response_len, _ = SHAPES[args.shape]
    rows = make_rows(args.batch * (args.warmup + args.steps), prompt_len, response_len, args.seed)
    if args.adam == "foreach":  # the kernel build_adamw used on the CPU before it took the fused one
        import feedback_lm.optim

        feedback_lm.optim.fused_kernel = lambda params: None
    fn = {"ours": run_ours, "plain": run_plain}[args.worker]
    result = fn(args, model_config(args), rows)
    result["torch_threads"] = torch.get_num_threads()
    if args.device == "cuda":
        result["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print(RESULT_MARK + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------- the parent
def parse_result(stdout: str) -> dict | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    return None


def run_subprocess(cmd: list[str], what: str, env: dict | None = None, timeout: float | None = None) -> dict:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT, env=env,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"{what} timed out after {timeout:.0f}s"}
    result = parse_result(proc.stdout)
    if proc.returncode != 0 or result is None:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        return {"error": f"{what} failed (exit {proc.returncode}):\n{tail}"}
    result["process_s"] = time.perf_counter() - t0
    return result


def worker_cmd(args, method: str) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", method, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--batch", str(args.batch), "--device", args.device,
           "--model", args.model, "--shape", args.shape, "--lr", str(args.lr), "--seed", str(args.seed),
           "--precision", precision(args), "--adam", args.adam]
    return cmd + (["--compile"] if args.compile else [])


def worker_env(args) -> dict:
    """The environment of every method's process: the same intra-op thread count for all three."""
    env = dict(os.environ)
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    return env


def ensure_trl_venv(venv: Path) -> tuple[Path | None, str | None]:
    """The TRL virtualenv's python, creating the venv on first use; or (None, reason)."""
    py = venv / "bin" / "python"
    check = [str(py), "-c", "import trl, datasets, torch"]
    if py.exists() and subprocess.run(check, check=False, capture_output=True).returncode == 0:
        return py, None
    print(f"creating {venv.relative_to(ROOT)} (one-off: {', '.join(TRL_PINS)}; a few minutes) ...",
          flush=True)
    steps = [[sys.executable, "-m", "venv", str(venv)],
             [str(py), "-m", "pip", "install", "-q", TRL_PINS[0]],
             [str(py), "-m", "pip", "install", "-q", TRL_PINS[1], "datasets"],
             check]
    for cmd in steps:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if proc.returncode != 0:
            lines = [ln for ln in (proc.stderr + proc.stdout).splitlines()
                     if ln.strip() and not ln.startswith("WARNING: Location")]
            return None, f"`{' '.join(cmd[-3:])}` failed: {lines[-1] if lines else 'no output'}"
    return py, None


def run_trl(args) -> dict:
    if args.device != "cpu":
        return {"unavailable": "GPU mode: the TRL venv holds a CPU-only torch"}
    if args.model != "tiny-gpt2":
        return {"unavailable": f"TRL side runs the causal tiny-gpt2 workload only (not {args.model})"}
    py, reason = ensure_trl_venv(TRL_VENV)
    if py is None:
        return {"unavailable": reason}
    prompt_len, response_len, _ = SHAPES[args.shape]
    cmd = [str(py), str(ROOT / "bench" / "_trl_sft.py"), "--steps", str(args.steps), "--warmup",
           str(args.warmup), "--batch", str(args.batch), "--prompt-len", str(prompt_len), "--response-len",
           str(response_len), "--lr", str(args.lr), "--seed", str(args.seed)]
    return run_subprocess(cmd, "trl", env=worker_env(args))


def machine_info(args) -> dict:
    import lightning
    import torch
    import transformers

    info = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "torch": torch.__version__,
            "lightning": lightning.__version__, "transformers": transformers.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": args.threads or torch.get_num_threads(),
            "cpu": _cpu_name(),
            "platform": platform.platform()}
    if args.device == "cuda":
        info["device_name"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    else:
        info["device_name"] = info["cpu"]
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def peak_flops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in device_name), None)


def check_vocab_override(cfg: dict) -> None:
    """Fail fast (before any GPU time) if the model config cannot set vocab_size."""
    from feedback_lm.models import ModelConfig, build_hf_config, load_tokenizer

    mc = ModelConfig.coerce(cfg)
    try:
        hf = build_hf_config(mc, load_tokenizer(mc))
    except TypeError as e:
        raise SystemExit(f"the gpt2-large shape needs model.overrides.vocab_size to replace the tokenizer's "
                         f"vocabulary size in feedback_lm.models.build_hf_config ({e})") from None
    if hf.vocab_size != cfg["overrides"]["vocab_size"]:
        raise SystemExit(f"vocab_size override ignored: built {hf.vocab_size}, "
                         f"asked {cfg['overrides']['vocab_size']}")


def print_table(results: dict, args, info: dict) -> None:
    w = workload(args)
    print(f"\nSFT throughput: {w['model']}, batch {w['batch']} x {w['tokens_per_sample']} tokens "
          f"({w['prompt_tokens']} prompt + {w['response_tokens']} response incl. EOS), {args.device} "
          f"({info['device_name']}, {info['torch_threads']} threads), {w['precision']}"
          f"{', compiled' if w['compile'] else ''}; "
          f"{args.steps} steps after {args.warmup} warmup")
    gpu = args.device == "cuda"
    head = f"{'method':<7} {'samples/s':>10} {'tokens/s':>11} {'step ms':>9} {'vs plain':>9}"
    print(head + (f" {'MFU':>6}" if gpu else ""))
    plain = results.get("plain", {}).get("samples_per_s")
    for name, r in results.items():
        if "samples_per_s" not in r:
            why = r.get("unavailable") or r.get("error", "?").splitlines()[0]
            print(f"{name:<7} {'unavailable' if 'unavailable' in r else 'failed'} ({why})")
            continue
        ratio = f"{r['samples_per_s'] / plain:9.3f}" if plain else f"{'-':>9}"
        line = (f"{name:<7} {r['samples_per_s']:10.1f} {r['tokens_per_s']:11.0f} "
                f"{r['step_ms_median']:9.1f} {ratio}")
        if gpu:
            line += f" {r['mfu']:6.1%}" if r.get("mfu") is not None else f" {'?':>6}"
        print(line)
    if plain and "samples_per_s" in results.get("ours", {}):
        print(f"ours overhead vs plain: {1 - results['ours']['samples_per_s'] / plain:.1%} (1 - ours/plain)")
    for name, r in results.items():
        if "error" in r:
            print(f"\n[{name}] {r['error']}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30, help="measured steps (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="steps run first and not measured (default 5, >= 1)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 32; 16 for gpt2-large)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--model", choices=["tiny-gpt2", "tiny-t5", "tiny-t5-default"], default="tiny-gpt2",
                   help="architecture of the tiny shape (tiny-t5-default: the embedded default's 1M-parameter T5)")
    p.add_argument("--precision", default=None,
                   help="32-true, bf16-mixed or auto (bf16-mixed where the hardware has native bf16); "
                        "default bf16-mixed on the GPU, 32-true on the CPU")
    p.add_argument("--adam", choices=["fused", "foreach"], default="fused",
                   help="AdamW kernel of ours and plain (default fused, what build_adamw picks on CPU and GPU)")
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny",
                   help="tiny (64+32 bytes) or gpt2-large (256+256 tokens, GPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the forward (model.compile=true)")
    p.add_argument("--which", default="ours,plain,trl", help="comma-separated subset of ours,plain,trl")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="OMP/MKL threads of every method's process (default: torch's default, one per core)")
    p.add_argument("--worker", choices=["ours", "plain"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.batch is None:
        args.batch = SHAPES[args.shape][2]
    if args.warmup < 1 or args.steps < 1:
        p.error("--warmup and --steps must be >= 1 (timing starts at the end of the last warmup step)")
    if args.worker:
        worker_main(args)
        return
    which = [m.strip() for m in args.which.split(",") if m.strip()]
    bad = sorted(set(which) - set(METHODS))
    if bad:
        p.error(f"unknown method(s) {bad}; choose from {list(METHODS)}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda but torch sees no CUDA device")
    if args.shape == "gpt2-large":
        check_vocab_override(model_config(args))

    info = machine_info(args)
    results: dict[str, dict] = {}
    for method in which:
        print(f"running {method} ...", flush=True)
        if method == "trl":
            results[method] = run_trl(args)
        else:
            results[method] = run_subprocess(worker_cmd(args, method), method, env=worker_env(args))
    peak = peak_flops(info["device_name"]) if args.device == "cuda" else None
    for r in results.values():
        if "tokens_per_s" in r and args.device == "cuda":
            r["model_flops_per_s"] = 6 * r["n_params"] * r["tokens_per_s"]
            r["mfu"] = r["model_flops_per_s"] / peak if peak else None
    plain = results.get("plain", {}).get("samples_per_s")
    for r in results.values():
        if plain and "samples_per_s" in r:
            r["vs_plain"] = r["samples_per_s"] / plain
    print_table(results, args, info)
    if args.json:
        out = {"machine": {**info, "peak_bf16_flops": peak}, "workload": workload(args),
               "model_config": model_config(args), "results": results}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    if any("error" in r for r in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
