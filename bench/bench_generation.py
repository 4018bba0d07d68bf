"""Sampling with and without the cached bf16 weight casts, alternated in ONE process (docs/speed.md).

Lightning's bf16 autocast runs with torch's cast cache off, so plain generation casts every fp32 weight to
bf16 again for every new token. ``Policy.generate`` caches the casts for the whole call
(``feedback_lm.precision.cached_weight_casts``) and clears them on exit. torch caches only the casts of
weights that require gradients, so ``Policy.generate`` also marks a LoRA model's frozen base weights for the
call. This bench samples bench_ppo's rollout (``--rows`` prompts x 32 new tokens) inside a Lightning-like
region (``torch.autocast(..., cache_enabled=False)``) in three variants:

* ``plain``: no cache (one cast per weight per token);
* ``trainable``: the cache for weights that require gradients only (what torch caches by itself);
* ``cached``: what ``Policy.generate`` does (frozen weights too; the same as ``trainable`` without LoRA).

The order alternates every round; it reports the median time of each (thread CPU time with one thread, wall
time with more) and whether all variants sampled the same tokens. ``--family`` is bench_ppo's T5 or GPT-2
(fully trainable) or ``smollm2`` (SmolLM2-135M with the preset's LoRA adapters: ``conf/model/smollm2-135m.yaml``).

    python bench/bench_generation.py --family t5
    python bench/bench_generation.py --family smollm2 --rows 16 --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ppo import N_PROMPTS, PROMPT_LEN, RESPONSE_LEN, make_prompts  # noqa: E402
from bench_sampler import add_common_args, build_policy, setup  # noqa: E402
from bench_sft import ROOT, machine_info  # noqa: E402

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, default_rows=N_PROMPTS)
    args = p.parse_args(argv)

    import torch

    import feedback_lm.policy

    clock = setup(args.threads)
    torch.manual_seed(0)
    policy = build_policy(args.family)
    ids, mask = policy.encode_prompts(make_prompts(args.rows, PROMPT_LEN, 0))
    real = feedback_lm.policy.cached_weight_casts
    contexts = {"plain": lambda device, module=None: contextlib.nullcontext(),
                "trainable": lambda device, module=None: real(device), "cached": real}

    def sample(variant: str):
        feedback_lm.policy.cached_weight_casts = contexts[variant]
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):  # as Lightning's bf16-mixed
                torch.manual_seed(1)
                return policy.generate(ids, mask, max_new_tokens=RESPONSE_LEN, do_sample=True, stop_at_eos=False)
        finally:
            feedback_lm.policy.cached_weight_casts = real

    variants = tuple(contexts)
    first = [sample(v).response_ids for v in variants]  # also the warm-up
    same = all(torch.equal(first[0], f) for f in first[1:])
    times = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants if r % 2 == 0 else variants[::-1]:
            t0 = clock()
            sample(v)
            times[v].append(clock() - t0)
    unit = "CPU ms" if args.threads == 1 else "ms"
    print(f"{args.family}: sampling {args.rows} x {RESPONSE_LEN} tokens under bf16 autocast, median of "
          f"{args.rounds} rounds, {args.threads} thread(s); same tokens: {same}")
    base = statistics.median(times["plain"])
    args.device = "cpu"
    result = {"machine": machine_info(args), "family": args.family, "rows": args.rows, "rounds": args.rounds,
              "clock": "thread CPU time" if args.threads == 1 else "wall", "same_tokens": same, "variants": {}}
    for v in variants:
        ms = 1e3 * statistics.median(times[v])
        print(f"  {v:10s} {ms:7.1f} {unit}  {1e3 * base / ms:5.2f}x")
        result["variants"][v] = {"ms_median": ms, "ms": [round(1e3 * t, 2) for t in times[v]],
                                 "speedup": 1e3 * base / ms}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
