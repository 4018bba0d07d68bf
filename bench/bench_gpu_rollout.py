"""GPU benchmark of the PPO rollout phase and of one full PPO iteration (issue 4).

1. **Generation** (64 prompts of 128 tokens, 64 new tokens, pure sampling, random weights in bf16), three
   ways on the same model: plain ``generate`` ("plain"), Hugging Face's static cache with its automatic
   ``torch.compile`` ("hf_static"), and our fast path ``Policy.generate(fast=True)`` ("ours_fast":
   :mod:`feedback_lm.sampling`, static cache + a CUDA-graph decode step + on-device sampling). New
   tokens per second after warmup calls (compilation) are dropped; every row samples all 64 tokens.
2. **PPO iteration** with the real ``plugins.ppo.PPO`` under ``lightning.Trainer`` (bf16-mixed): 64
   prompts, 64 new tokens (fixed length), 4 epochs of minibatch 16, time split into generation / forward
   (old log-probs, values, reference) / scoring / update, from the module's own ``time/*`` metrics.

Shapes: ``gpt2-large`` (36 layers, d=1280, vocab 50257) and ``flan-t5-large`` (24+24 layers, d=1024,
gated-GELU d_ff 2816, vocab 32128), built from config with the byte tokenizer (prompt ids are random).
``--shapes tiny-gpt2,tiny-t5 --device cpu`` is the smoke test that runs anywhere.

    python bench/bench_gpu_rollout.py --json bench/results/gpu_rollout.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {
    "gpt2-large": {"preset": "tiny-gpt2", "overrides": {"n_layer": 36, "n_embd": 1280, "n_head": 20,
                                                          "n_positions": 1024, "vocab_size": 50257}},
    "flan-t5-large": {"preset": "tiny-t5", "overrides": {"d_model": 1024, "d_ff": 2816, "d_kv": 64, "num_heads": 16,
                                                          "num_layers": 24, "num_decoder_layers": 24,
                                                          "feed_forward_proj": "gated-gelu", "vocab_size": 32128,
                                                          "tie_word_embeddings": False}},
    "tiny-gpt2": {"preset": "tiny-gpt2", "overrides": {}},
    "tiny-t5": {"preset": "tiny-t5", "overrides": {}},
}


def model_config(shape: str) -> dict:
    spec = SHAPES[shape]
    return {"name": shape, "preset": spec["preset"], "tokenizer": "byte", "overrides": dict(spec["overrides"])}


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_generation(shape: str, device, batch: int, prompt_len: int, new_tokens: int, warmup: int, reps: int,
                     which: list[str]) -> dict:
    from feedback_lm.policy import Policy

    torch.manual_seed(0)
    policy = Policy.from_config(model_config(shape)).to(device)
    if device.type == "cuda":
        policy = policy.to(torch.bfloat16)
    policy.eval()
    ids = torch.randint(3, 259, (batch, prompt_len), device=device)
    mask = torch.ones_like(ids, dtype=torch.bool)
    model = policy.model

    def plain():
        return policy.generate(ids, mask, max_new_tokens=new_tokens, stop_at_eos=False).response_ids

    def hf_static():
        out = model.generate(input_ids=ids, attention_mask=mask.long(), max_new_tokens=new_tokens, do_sample=True,
                             top_k=0, top_p=1.0, eos_token_id=None, pad_token_id=policy.pad_token_id,
                             cache_implementation="static")
        return out[:, 1:] if policy.is_encoder_decoder else out[:, prompt_len:]

    def ours_fast():
        return policy.generate(ids, mask, max_new_tokens=new_tokens, stop_at_eos=False, fast=True).response_ids

    fns = {"plain": plain, "hf_static": hf_static, "ours_fast": ours_fast}
    results = {}
    for name in which:
        try:
            t0 = time.perf_counter()
            for _ in range(warmup):
                out = fns[name]()
            sync(device)
            warm_s = time.perf_counter() - t0
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                out = fns[name]()
                sync(device)
                times.append(time.perf_counter() - t0)
            assert out.shape == (batch, new_tokens), out.shape
            med = statistics.median(times)
            results[name] = {"seconds": med, "new_tokens_per_s": batch * new_tokens / med, "warmup_s": warm_s,
                             "all_s": times}
        except Exception as e:  # one failing method must not lose the others' numbers
            results[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
        print(shape, name, results[name], flush=True)
    if "plain" in results and "new_tokens_per_s" in results["plain"]:
        for name, r in results.items():
            if "new_tokens_per_s" in r:
                r["speedup_vs_plain"] = r["new_tokens_per_s"] / results["plain"]["new_tokens_per_s"]
    fns.clear()  # drop the closures (and the model) before the next shape
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return results


class RandomPrompts(torch.utils.data.Dataset):
    def __init__(self, n: int, length: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        alphabet = "abcdefghijklmnopqrstuvwxyz     "
        self.rows = ["".join(alphabet[i] for i in torch.randint(len(alphabet), (length,), generator=g).tolist())
                     for _ in range(n)]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return {"prompt": self.rows[i]}


def bench_ppo_iteration(shape: str, device, batch: int, prompt_len: int, new_tokens: int, iterations: int,
                        fast: bool) -> dict:
    import lightning as L

    from feedback_lm.rewards import LengthReward
    from plugins.ppo import PPO

    torch.manual_seed(0)
    module = PPO(policy=model_config(shape), reward=LengthReward(new_tokens // 2), lr=1e-6, ppo_epochs=4,
                 minibatch_size=16, max_new_tokens=new_tokens, mode="lhp_fixed_length", kl_controller="adaptive",
                 fast_generation=fast, forward_batch_size=batch)
    loader = torch.utils.data.DataLoader(RandomPrompts(batch * (iterations + 1), prompt_len), batch_size=batch,
                                         collate_fn=lambda rows: {"prompt": [r["prompt"] for r in rows]})
    seen: list[dict] = []

    class Grab(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, b, i):
            seen.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("time/")})

    accel = "gpu" if device.type == "cuda" else "cpu"
    trainer = L.Trainer(accelerator=accel, devices=1, precision="bf16-mixed" if accel == "gpu" else "32-true",
                        max_steps=iterations, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[Grab()])
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    total = time.perf_counter() - t0
    steady = seen[1:] or seen  # the first iteration compiles
    split = {k: statistics.median(s[k] for s in steady) for k in steady[0]}
    split["iteration"] = sum(split.values())
    out = {"fast_generation": fast, "iterations": iterations, "wall_s": total, "median_split_s": split,
           "per_iteration": seen}
    print(shape, "ppo", out["median_split_s"], flush=True)
    del module, trainer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="gpt2-large,flan-t5-large")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--which", default="plain,hf_static,ours_fast")
    p.add_argument("--ppo-iterations", type=int, default=3, help="0 skips the PPO iteration part")
    p.add_argument("--ppo-shapes", default=None, help="default: --shapes")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    results = {"when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
               "torch": torch.__version__, "args": vars(args), "generation": {}, "ppo": {}}

    def save():
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(results, indent=2))

    for shape in args.shapes.split(",") if args.which else []:  # --which "" runs only the PPO part
        results["generation"][shape] = bench_generation(shape, device, args.batch, args.prompt_len, args.new_tokens,
                                                        args.warmup, args.reps, args.which.split(","))
        save()
    if args.ppo_iterations > 0:
        for shape in (args.ppo_shapes or args.shapes).split(","):
            try:
                results["ppo"][shape] = bench_ppo_iteration(shape, device, args.batch, args.prompt_len,
                                                            args.new_tokens, args.ppo_iterations, fast=True)
            except Exception as e:
                results["ppo"][shape] = {"error": f"{type(e).__name__}: {e}"[:800]}
                print(shape, "ppo failed", results["ppo"][shape], flush=True)
            save()
    print(json.dumps({s: {m: round(r.get("new_tokens_per_s", 0)) for m, r in g.items()}
                      for s, g in results["generation"].items()}))


if __name__ == "__main__":
    main()
