"""How the next token is drawn: ``torch.multinomial`` (Hugging Face's ``do_sample=True``) against our
inverse-CDF draw (``feedback_lm.ops.sample_categorical``, what ``Policy.generate`` uses), on the CPU
(docs/speed.md, "Sampling").

Two measurements, each alternated in ONE process so that this machine's drift hits both arms:

* ``draw``: the draw alone on random fp32 logits ``[B, V]`` (softmax + multinomial against softmax +
  fp64 running sums + searchsorted), for the bench vocabulary (384) and SmolLM2's (49,152);
* ``generate``: a whole sampled generation (``--rows`` prompts x ``--tokens`` new tokens, fixed length,
  bf16 autocast as Lightning's ``bf16-mixed``, cached weight casts) through ``Policy.generate`` against the
  same call into Hugging Face's ``generate(do_sample=True)``; ``--family`` is ``t5`` / ``gpt2`` (bench_ppo's
  models) or ``smollm2`` (SmolLM2-135M-Instruct, ``conf/model/smollm2-135m.yaml``).

Reports median thread CPU (``--threads 1``) or wall (more threads) milliseconds per arm.

    python bench/bench_sampler.py --family smollm2 --rows 64 --threads 2 --json bench/results/sampler_smollm2.json
    python bench/bench_sampler.py --family t5 --json bench/results/sampler_t5.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ppo import FAMILIES, PROMPT_LEN, make_prompts, model_config  # noqa: E402
from bench_sft import ROOT, machine_info  # noqa: E402

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def build_policy(model: str):
    from feedback_lm.policy import Policy

    if model in FAMILIES:
        return Policy.from_config(model_config(model)).eval()
    from omegaconf import OmegaConf

    from feedback_lm.testing import compose

    cfg = compose(["model=smollm2-135m", "run_dir=/tmp/bench_sampler_unused"])
    return Policy.from_config(OmegaConf.to_container(cfg.model, resolve=True)).eval()


def add_common_args(p: argparse.ArgumentParser, default_rows: int = 64) -> None:
    """The options bench_sampler and bench_generation share."""
    p.add_argument("--family", choices=[*sorted(FAMILIES), "smollm2"], default="t5",
                   help="bench_ppo's T5 / GPT-2, or SmolLM2-135M with the preset's LoRA")
    p.add_argument("--rows", type=int, default=default_rows, help="sequences sampled at once")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)


def setup(threads: int):
    """As train.py's run() does (glibc keeps freed memory), ``threads`` torch threads; returns the clock:
    thread CPU time with one thread, wall time with more."""
    import torch

    from feedback_lm.malloc import keep_freed_memory

    keep_freed_memory()
    torch.set_num_threads(threads)
    return time.thread_time if threads == 1 else time.perf_counter


def alternate(arms: dict, rounds: int, clock) -> dict[str, list[float]]:
    """Run each arm once per round, in alternating order; seconds per call by ``clock``."""
    times = {name: [] for name in arms}
    names = list(arms)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            t0 = clock()
            arms[name]()
            times[name].append(clock() - t0)
    return times


def summary(times: dict[str, list[float]], base: str) -> dict:
    b = statistics.median(times[base])
    return {k: {"ms_median": 1e3 * statistics.median(v), "ms": [round(1e3 * t, 2) for t in v],
                "speedup": b / statistics.median(v)} for k, v in times.items()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--tokens", type=int, default=32, help="new tokens per sequence")
    args = p.parse_args(argv)

    import torch

    from feedback_lm import ops
    from feedback_lm.precision import cached_weight_casts

    clock = setup(args.threads)
    result = {"machine": machine_info(argparse.Namespace(device="cpu", threads=args.threads)),
              "family": args.family, "rows": args.rows, "tokens": args.tokens, "rounds": args.rounds,
              "threads": args.threads, "clock": "thread CPU time" if args.threads == 1 else "wall", "draw": {}}

    for vocab in (384, 49152):
        logits = torch.randn(args.rows, vocab)
        arms = {"multinomial": lambda: torch.multinomial(torch.softmax(logits, -1), 1),
                "inverse_cdf": lambda: ops.sample_categorical(logits)}
        for f in arms.values():
            f()
        times = alternate(arms, max(args.rounds, 20), clock)
        result["draw"][str(vocab)] = summary(times, "multinomial")
        print(f"draw [{args.rows} x {vocab}]: " + ", ".join(
            f"{k} {v['ms_median']:.2f} ms" for k, v in result["draw"][str(vocab)].items()))

    torch.manual_seed(0)
    policy = build_policy(args.family)
    ids, mask = policy.encode_prompts(make_prompts(args.rows, PROMPT_LEN, 0))

    def ours():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
            return policy.generate(ids, mask, max_new_tokens=args.tokens, do_sample=True, stop_at_eos=False)

    def hf_multinomial():  # what Policy.generate ran before: Hugging Face's own sampling mode
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False), \
                cached_weight_casts("cpu"):
            return policy.model.generate(input_ids=ids, attention_mask=mask.long(), max_new_tokens=args.tokens,
                                         min_new_tokens=args.tokens, do_sample=True, top_k=0, top_p=1.0,
                                         temperature=1.0, pad_token_id=policy.pad_token_id)

    ours(), hf_multinomial()  # warm-up
    times = alternate({"multinomial": hf_multinomial, "inverse_cdf": ours}, args.rounds, clock)
    result["generate"] = summary(times, "multinomial")
    print(f"generate {args.family}, {args.rows} x {args.tokens} tokens, {args.threads} thread(s): " + ", ".join(
        f"{k} {v['ms_median']:.0f} ms ({v['speedup']:.2f}x)" for k, v in result["generate"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
