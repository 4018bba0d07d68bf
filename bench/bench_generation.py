"""Sampling with and without the cached bf16 weight casts, alternated in ONE process (docs/speed.md).

Lightning's bf16 autocast runs with torch's cast cache off, so plain generation casts every fp32 weight to
bf16 again for every new token. ``Policy.generate`` caches the casts for the whole call
(``feedback_lm.precision.cached_weight_casts``) and clears them on exit. This bench samples bench_ppo's
rollout (64 prompts x 32 new tokens, bench_ppo's models) inside a Lightning-like region
(``torch.autocast(..., cache_enabled=False)``) with the cache (``cached``) and without it (``plain``),
alternating the order every round, and reports the median thread CPU time of each and whether the two
sampled the same tokens.

    python bench/bench_generation.py --family t5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ppo import FAMILIES, N_PROMPTS, PROMPT_LEN, RESPONSE_LEN, make_prompts, model_config  # noqa: E402
from bench_sft import ROOT, machine_info  # noqa: E402

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=sorted(FAMILIES), default="t5")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import torch

    import feedback_lm.policy
    from feedback_lm.policy import Policy

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    policy = Policy.from_config(model_config(args.family)).eval()
    ids, mask = policy.encode_prompts(make_prompts(N_PROMPTS, PROMPT_LEN, 0))
    real = feedback_lm.policy.cached_weight_casts

    def sample(variant: str):
        feedback_lm.policy.cached_weight_casts = real if variant == "cached" else (
            lambda device: contextlib.nullcontext())
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):  # as Lightning's bf16-mixed
                torch.manual_seed(1)
                return policy.generate(ids, mask, max_new_tokens=RESPONSE_LEN, do_sample=True, stop_at_eos=False)
        finally:
            feedback_lm.policy.cached_weight_casts = real

    variants = ("plain", "cached")
    same = torch.equal(sample("plain").response_ids, sample("cached").response_ids)  # also the warm-up
    times = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants if r % 2 == 0 else variants[::-1]:
            t0 = time.thread_time()
            sample(v)
            times[v].append(time.thread_time() - t0)
    print(f"{args.family}: sampling {N_PROMPTS} x {RESPONSE_LEN} tokens under bf16 autocast, median of "
          f"{args.rounds} rounds, {args.threads} thread(s); same tokens: {same}")
    base = statistics.median(times["plain"])
    args.device = "cpu"
    result = {"machine": machine_info(args), "family": args.family, "rounds": args.rounds, "same_tokens": same,
              "variants": {}}
    for v in variants:
        ms = 1e3 * statistics.median(times[v])
        print(f"  {v:8s} {ms:7.1f} CPU ms  {1e3 * base / ms:5.2f}x")
        result["variants"][v] = {"cpu_ms_median": ms, "cpu_ms": [round(1e3 * t, 2) for t in times[v]],
                                 "speedup": 1e3 * base / ms}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
