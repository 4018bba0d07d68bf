"""One PPO-update-like training step, model variants alternated in ONE process (docs/speed.md).

The step: the policy's forward on 16 x (32 prompt + 32 response) tokens of bench_ppo's models (tiny GPT-2
4 x 256, tiny T5 2+2 x 256), fp32 log-softmax of the response tokens, backward, fused Adam (lr 0, so every
round sees the same weights), under bf16 autocast. Variants are switched on the same model between
steps, and rounds alternate their order, so that this machine's drift (docs/speed.md) hits all of them:

* ``hf``: Hugging Face's own modules (``gelu_new``, T5's feed-forward with its up-cast before ``wo``);
* ``fused``: what ``load_model`` builds (``gelu_pytorch_tanh``; T5's feed-forward without the up-cast);
* a suffix ``_sdpa`` / ``_eager`` (``hf_sdpa``, ``fused_eager``, ...): that attention kernel instead of the
  preset's (eager).

Reports the median thread CPU time per step and the loss of each variant (the same to float rounding;
bit-identical between ``hf`` and ``fused`` on T5).

    python bench/bench_update_step.py --family gpt2
    python bench/bench_update_step.py --family t5 --variants hf,fused,fused_sdpa --rounds 15
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ppo import FAMILIES, MINIBATCH, PROMPT_LEN, RESPONSE_LEN, model_config  # noqa: E402
from bench_sft import ROOT, machine_info  # noqa: E402

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def build(family: str):
    import torch

    from feedback_lm.policy import Policy

    torch.manual_seed(0)
    cfg = model_config(family)  # attention as the preset's (conf/model/tiny-*.yaml)
    return Policy.from_config(cfg).train(), cfg["attention"]


def switcher(policy, default_attention: str):
    """A function ``apply(variant)`` that turns the model into that variant in place."""
    from transformers.activations import GELUTanh, NewGELUActivation

    from feedback_lm.speedups import T5_FEED_FORWARD as ours

    theirs = {v: k for k, v in ours.items()}
    acts = [m for m in policy.model.modules() if isinstance(getattr(m, "act", None), (GELUTanh, NewGELUActivation))]
    ffs = [m for m in policy.model.modules() if type(m) in ours or type(m) in theirs]

    def apply(variant: str) -> None:
        fused = variant.startswith("fused")
        for m in acts:
            m.act = GELUTanh() if fused else NewGELUActivation()
        for m in ffs:
            m.__class__ = (ours.get(type(m), type(m)) if fused else theirs.get(type(m), type(m)))
        kernel = variant.split("_", 1)[1] if "_" in variant else default_attention
        policy.model.set_attn_implementation(kernel)

    return apply


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=sorted(FAMILIES), default="gpt2")
    p.add_argument("--variants", default="hf,fused", help="comma-separated: hf, fused, each optionally with _sdpa or _eager")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    policy, attention = build(args.family)
    apply = switcher(policy, attention)
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, 300, (MINIBATCH, PROMPT_LEN), generator=gen)
    response = torch.randint(3, 300, (MINIBATCH, RESPONSE_LEN), generator=gen)
    ones_p, ones_r = torch.ones_like(prompt, dtype=torch.bool), torch.ones_like(response, dtype=torch.bool)
    opt = torch.optim.Adam(policy.model.parameters(), lr=0.0, fused=True)

    def step() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = policy(prompt, ones_p, response, ones_r).logits
        loss = -torch.log_softmax(logits.float(), -1).gather(-1, response[..., None]).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    variants = args.variants.split(",")
    losses, times = {}, {v: [] for v in variants}
    for v in variants:  # warm-up, and the loss each variant computes
        apply(v)
        step()
        losses[v] = step()
    for r in range(args.rounds):
        for v in variants if r % 2 == 0 else variants[::-1]:
            apply(v)
            t0 = time.thread_time()
            step()
            times[v].append(time.thread_time() - t0)
    base = statistics.median(times[variants[0]])
    print(f"{args.family}: one update step (bf16 autocast, {MINIBATCH} x ({PROMPT_LEN} + {RESPONSE_LEN}) tokens), "
          f"median of {args.rounds} rounds, {args.threads} thread(s)")
    args.device = "cpu"
    result = {"machine": machine_info(args), "family": args.family, "rounds": args.rounds, "variants": {}}
    for v in variants:
        ms = 1e3 * statistics.median(times[v])
        print(f"  {v:12s} {ms:7.1f} CPU ms  {1e3 * base / ms:5.2f}x  loss {losses[v]:.6f}")
        result["variants"][v] = {"cpu_ms_median": ms, "cpu_ms": [round(1e3 * t, 2) for t in times[v]],
                                 "speedup": 1e3 * base / ms, "loss": losses[v]}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
