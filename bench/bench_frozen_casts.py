"""Training steps of SmolLM2-135M + LoRA with the frozen weights' bf16 casts kept for the fit or made at every
forward, alternated in ONE process (docs/speed.md, "Frozen weights cast once per fit").

Under bf16 autocast torch casts every fp32 weight that does not require gradients again at each forward:
with the preset's LoRA adapters (``conf/model/smollm2-135m.yaml``) that is 134 M base weights per forward.
``FrozenCastCache`` (``frozen_cast_cache: auto``, on the CPU) turns those layers into ``FrozenCastLinear``,
which keeps one cast for the whole fit. Two steps, each inside ``torch.autocast(..., cache_enabled=False)`` as
Lightning runs it, on ``--rows`` x ``--tokens`` random token ids:

* ``sft``: the policy's forward, fp32 log-softmax loss, backward, fused AdamW on the adapters;
* ``dpo``: as ``sft`` plus the reference's forward (the same model with its adapters off, no gradients),
  as DPO and every LoRA online algorithm run it.

Variants ``autocast`` (torch's casts) and ``kept`` are switched on the same model without dropping the kept
casts (as within one fit). Each round runs one untimed and ``--block`` timed steps of each variant, in an
order that alternates every round: the first step after a switch runs on the other variant's memory layout
and pays page faults the steady state does not (timing it would flatter ``kept`` by up to 8x the cast's own
cost). Reports the median time of each (thread CPU time with one thread, wall time with more) and the
losses (bit-identical).

    python bench/bench_frozen_casts.py --threads 2
    python bench/bench_frozen_casts.py --rows 8 --tokens 96 --rounds 8 --json bench/results/frozen_casts_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sampler import build_policy, setup  # noqa: E402
from bench_sft import ROOT, machine_info  # noqa: E402

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--tokens", type=int, default=96)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--block", type=int, default=3, help="timed steps of one variant in a row (after an untimed one)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", default="sft,dpo")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    clock = setup(args.threads)
    import torch

    from feedback_lm.precision import _KEEPING, _PLAIN, cache_frozen_casts

    policy = build_policy("smollm2").train()
    model = policy.model
    n = cache_frozen_casts(model)
    kept = [m for m in model.modules() if type(m) in _PLAIN]
    frozen = sum(m.weight.numel() for m in kept)

    def use(variant: str) -> None:  # the class only: the kept casts stay, as between two steps of a fit
        to = _KEEPING if variant == "kept" else _PLAIN
        for m in kept:
            m.__class__ = to.get(type(m), type(m))

    torch.manual_seed(0)
    ids = torch.randint(3, 40000, (args.rows, args.tokens))
    mask = torch.ones_like(ids, dtype=torch.bool)
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=0.0, fused=True)

    def forward():
        return model(input_ids=ids, attention_mask=mask).logits

    def step(with_reference: bool) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
            ref = None
            if with_reference:
                with torch.no_grad(), model.disable_adapter():
                    ref = torch.log_softmax(forward().float(), -1)
            logp = torch.log_softmax(forward().float(), -1)
        loss = -logp[:, :-1].gather(-1, ids[:, 1:, None]).mean()
        if ref is not None:
            loss = loss + (logp - ref).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    variants = ("autocast", "kept")
    result = {"machine": machine_info(argparse.Namespace(device="cpu", threads=args.threads)), "rows": args.rows,
              "tokens": args.tokens, "rounds": args.rounds, "block": args.block, "frozen_layers": n, "frozen_weights": frozen, "steps": {}}
    print(f"SmolLM2-135M + LoRA: {n} frozen layers, {frozen / 1e6:.1f} M frozen weights; {args.rows} x {args.tokens} "
          f"tokens, {args.threads} thread(s), median of {args.rounds} rounds x {args.block} steps")
    for name in args.steps.split(","):
        with_reference = name == "dpo"
        losses, times = {}, {v: [] for v in variants}
        for v in variants:  # warm-up (the kept casts are made here), and the loss of each
            use(v)
            step(with_reference)
            losses[v] = step(with_reference)
        for r in range(args.rounds):
            for v in variants if r % 2 == 0 else variants[::-1]:
                use(v)
                step(with_reference)  # untimed: the first step after a switch pays for the other's memory layout
                for _ in range(args.block):
                    t0 = clock()
                    step(with_reference)
                    times[v].append(clock() - t0)
        a, b = (1e3 * statistics.median(times[v]) for v in variants)
        same = losses["autocast"] == losses["kept"]
        print(f"  {name}: autocast {a:7.1f} ms, kept {b:7.1f} ms, {a / b:.2f}x; losses "
              f"{'identical' if same else 'DIFFER'} ({losses['kept']:.6f})")
        result["steps"][name] = {"autocast_ms": a, "kept_ms": b, "speedup": a / b, "same_loss": same,
                                 "ms": {v: [round(1e3 * t, 1) for t in times[v]] for v in variants}}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
