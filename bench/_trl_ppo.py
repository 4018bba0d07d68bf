"""The TRL side of bench/bench_ppo.py: TRL 0.11.4's ``PPOTrainer`` on the same PPO workload, on CPU.

Runs inside ``bench/.venv-trl011`` (torch 2.13 CPU + trl 0.11.4 + transformers 4.46.3; bench_ppo.py
creates it), so it imports nothing from this project but the stdlib helpers of bench_ppo.py / bench_sft.py.
Prints one line ``BENCH_RESULT {json}``.

Workload, matched to the "ours" run of bench_ppo.py:
* the same architectures from config with random weights, dropout 0, byte tokenizer ``ByT5Tokenizer()``:
  GPT-2 (4 layers, 256 wide, 4 heads, 512 positions, vocabulary 384) in
  ``AutoModelForCausalLMWithValueHead``, or T5 (2+2 layers, d_model 256, d_ff 1024, 4 heads, d_kv 64,
  32 buckets / max distance 128, relu, tied embeddings) in ``AutoModelForSeq2SeqLMWithValueHead``; value
  head dropout 0 (``summary_dropout_prob=0``); the reference is TRL's own frozen copy (``ref_model=None``);
* per iteration 64 fresh 32-byte prompts (the same texts as ours); GPT-2 queries are the 32 bytes, T5
  queries the 32 bytes + EOS (what ours feeds T5's encoder);
* ``ppo_trainer.generate(queries, batch_size=64, return_prompt=False, remove_padding=False,
  do_sample=True, top_k=0, top_p=1.0, temperature=1.0, max_new_tokens=32, eos_token_id=None,
  pad_token_id=0)``: exactly 32 sampled tokens. ``eos_token_id=None`` turns off the EOS stopping
  criterion only (no logits processor is added, so the sampled distribution is unchanged; EOS can still
  be sampled), and ``remove_padding=False`` stops TRL cutting a response after a sampled EOS. This is
  what ours does (``Policy.generate(stop_at_eos=False)`` passes ``eos_token_id=None``);
  ``min_new_tokens=32`` would instead mask EOS out of the distribution;
* scores: bench_ppo.length_score (ours' ``lhp_fixed_length`` rule with ``LengthReward(8)``) on the
  decoded response cut after its first EOS (``byte_decode``: ByT5's decode without its slow per-token loop,
  checked equal to ``tok.decode`` on the first iteration);
* ``PPOConfig(batch_size=64, mini_batch_size=16, ppo_epochs=4, gradient_accumulation_steps=1,
  learning_rate=1e-4, adap_kl_ctrl=True, init_kl_coef=0.1, target=2, horizon=10000, gamma=1, lam=0.95,
  cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, whiten_rewards=True, max_grad_norm=None,
  early_stopping=False, kl_penalty="kl")``, Adam(lr 1e-4, eps 1e-5) passed in (TRL's default eps is 1e-8),
  no LR scheduler.

What TRL does differently, kept because it is how PPOTrainer trains: its no-grad forward passes of the
rollout run in chunks of ``mini_batch_size`` (16), ours in one chunk of 64 (``forward_batch_size``);
it computes logits at every position (prompt too) and the entropy over full logits in every minibatch;
it keeps the full logits of the minibatch for its statistics; ``step`` ends with ``record_step_stats``
(histograms, means) and ``stats_to_np``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

from bench_ppo import (
    ADAM_EPS,
    CLIPRANGE,
    CLIPRANGE_VALUE,
    GAMMA,
    KL_COEF,
    KL_HORIZON,
    KL_TARGET,
    LAM,
    LR,
    MINIBATCH,
    N_PROMPTS,
    PPO_EPOCHS,
    PROMPT_LEN,
    RESPONSE_LEN,
    VF_COEF,
    iteration_summary,
    length_score,
    make_prompts,
)

TRL_TIMING = ("time/ppo/forward_pass", "time/ppo/compute_rewards", "time/ppo/compute_advantages",
              "time/ppo/optimize_step", "time/ppo/calc_stats", "time/ppo/total")


def byte_decode(ids: list[int]) -> str:
    """``ByT5Tokenizer().decode(ids, skip_special_tokens=True)`` without its per-token Python loop
    (transformers 4.46's is ~30x slower than ours' 5.x ``batch_decode``): ids 3..258 are bytes + 3; pad, EOS,
    UNK and the sentinel ids are special and dropped; invalid UTF-8 is ignored."""
    return bytes(i - 3 for i in ids if 3 <= i < 259).decode("utf-8", errors="ignore")


def build(family: str, tok):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, T5Config, T5ForConditionalGeneration
    from trl import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead

    ids = {"pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id}
    if family == "gpt2":  # = feedback_lm.models TINY_PRESETS["tiny-gpt2"] + bench_sft.MODELS overrides
        cfg = GPT2Config(vocab_size=len(tok), n_embd=256, n_layer=4, n_head=4, n_positions=512,
                         bos_token_id=tok.eos_token_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                         summary_first_dropout=0.0, **ids)
        lm, wrapper = GPT2LMHeadModel(cfg), AutoModelForCausalLMWithValueHead
    else:  # = TINY_PRESETS["tiny-t5"] + bench_sft.MODELS["tiny-t5"] overrides
        cfg = T5Config(vocab_size=len(tok), d_model=256, d_ff=1024, d_kv=64, num_heads=4, num_layers=2,
                       num_decoder_layers=2, relative_attention_num_buckets=32,
                       relative_attention_max_distance=128, feed_forward_proj="relu", dropout_rate=0.0,
                       decoder_start_token_id=tok.pad_token_id, **ids)
        lm, wrapper = T5ForConditionalGeneration(cfg), AutoModelForSeq2SeqLMWithValueHead
    lm.generation_config.pad_token_id = tok.pad_token_id
    model = wrapper.from_pretrained(lm, summary_dropout_prob=0.0)  # from_pretrained sets is_peft_model etc.
    assert isinstance(model.v_head.dropout, torch.nn.Identity)
    return model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--family", choices=["gpt2", "t5"], default="gpt2")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--gen-batch", type=int, default=N_PROMPTS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mixed-precision", default="no", choices=("no", "bf16"),
                   help="accelerate's mixed precision (bf16: torch.autocast on the CPU)")
    args = p.parse_args()
    warnings.filterwarnings("ignore")

    import numpy as np
    import torch
    import transformers
    import trl
    from transformers import ByT5Tokenizer
    from trl import PPOConfig, PPOTrainer

    transformers.logging.set_verbosity_error()
    tok = ByT5Tokenizer()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    model = build(args.family, tok)
    t5 = args.family == "t5"

    config = PPOConfig(
        batch_size=N_PROMPTS, mini_batch_size=MINIBATCH, ppo_epochs=PPO_EPOCHS, gradient_accumulation_steps=1,
        learning_rate=LR, adap_kl_ctrl=True, init_kl_coef=KL_COEF, target=KL_TARGET, horizon=KL_HORIZON,
        gamma=GAMMA, lam=LAM, cliprange=CLIPRANGE, cliprange_value=CLIPRANGE_VALUE, vf_coef=VF_COEF,
        whiten_rewards=True, max_grad_norm=None, early_stopping=False, kl_penalty="kl", seed=args.seed,
        log_with=None, optimize_device_cache=False,
        accelerator_kwargs={"mixed_precision": args.mixed_precision, "cpu": True},
    )
    optimizer = torch.optim.Adam(filter(lambda q: q.requires_grad, model.parameters()), lr=LR, eps=ADAM_EPS)
    trainer = PPOTrainer(config=config, model=model, ref_model=None, tokenizer=tok, optimizer=optimizer)
    gen_kwargs = {"do_sample": True, "top_k": 0, "top_p": 1.0, "temperature": 1.0, "max_new_tokens": RESPONSE_LEN,
                  "eos_token_id": None, "pad_token_id": tok.pad_token_id}

    total = args.warmup + args.iters
    prompts = make_prompts(N_PROMPTS * total, PROMPT_LEN, args.seed)
    starts: list[float] = []
    ends: list[float] = []
    cpu_starts: list[float] = []
    cpu_ends: list[float] = []
    splits: list[dict[str, float]] = []
    kls, betas, score_means = [], [], []
    for it in range(total):
        batch = prompts[it * N_PROMPTS: (it + 1) * N_PROMPTS]
        c0 = time.process_time()
        t0 = time.perf_counter()
        queries = [torch.tensor(ids) for ids in tok(batch, add_special_tokens=t5)["input_ids"]]
        responses = trainer.generate(queries, batch_size=args.gen_batch, return_prompt=False,
                                     remove_padding=False, **gen_kwargs)
        t1 = time.perf_counter()
        scores = []
        for r in responses:
            sampled = r[1:] if t5 else r  # T5's response starts with the decoder start token
            ids = sampled.tolist()
            found = tok.eos_token_id in ids
            cut = ids[: ids.index(tok.eos_token_id) + 1] if found else ids
            scores.append(torch.tensor(length_score(byte_decode(cut), found)))
        t2 = time.perf_counter()
        if it == 0:  # the fast decode is ByT5's decode (outside the timed part of the iteration)
            for r in responses:
                ids = (r[1:] if t5 else r).tolist()
                if byte_decode(ids) != tok.decode(ids, skip_special_tokens=True):
                    sys.exit(f"byte_decode differs from ByT5Tokenizer.decode on {ids}")
        stats = trainer.step(queries, responses, scores)
        t3 = time.perf_counter()
        cpu_ends.append(time.process_time())
        cpu_starts.append(c0)
        starts.append(t0)
        ends.append(t3)
        if it == 0:  # the workload, checked once (a mismatch fails the run)
            want_q = PROMPT_LEN + (1 if t5 else 0)
            want_r = RESPONSE_LEN + (1 if t5 else 0)
            if {len(q) for q in queries} != {want_q} or {len(r) for r in responses} != {want_r}:
                sys.exit(f"TRL queries/responses have lengths {sorted({len(q) for q in queries})} / "
                         f"{sorted({len(r) for r in responses})}, expected {want_q} / {want_r}")
        splits.append({"time/generate": t1 - t0, "time/score": t2 - t1, "time/step": t3 - t2,
                       **{k: float(stats[k]) for k in TRL_TIMING}})
        kls.append(round(float(stats["objective/kl"]), 4))
        betas.append(round(float(stats["objective/kl_coef"]), 5))
        score_means.append(round(float(np.mean([float(s) for s in scores])), 4))

    measured = splits[args.warmup:]
    lm = model.pretrained_model
    result = {
        **iteration_summary(starts, ends, args.warmup, cpu_starts, cpu_ends),
        "split_s": [{k: round(v, 4) for k, v in s.items()} for s in measured],
        "kl": kls, "kl_coef": betas, "score_mean": score_means,
        "prompts": N_PROMPTS, "prompt_tokens": PROMPT_LEN + (1 if t5 else 0), "response_tokens": RESPONSE_LEN,
        "optimizer_steps_per_iteration": PPO_EPOCHS * N_PROMPTS // MINIBATCH,
        "gen_batch": args.gen_batch,
        "n_params_policy": sum(q.numel() for q in lm.parameters()),
        "n_params_value_head": sum(q.numel() for q in model.v_head.parameters()),
        "torch_threads": torch.get_num_threads(),
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
    }
    print("BENCH_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
