"""The TRL side of bench/bench_rm.py: TRL's ``RewardTrainer`` on the same pairwise workload, on CPU.

Runs inside ``bench/.venv-trl`` (torch 2.13 CPU + trl 1.16; bench_sft.py creates it), so it imports
nothing from this project. Prints one line ``BENCH_RESULT {json}``.

Workload, matched to the "ours"/"plain" runs of bench_rm.py:
* tiny GPT-2 for sequence classification (``GPT2ForSequenceClassification``, what
  ``AutoModelForSequenceClassification`` builds for it) from config with random weights: 4 layers, 256
  wide, 4 heads, vocabulary 384, dropout 0, ``num_labels=1`` (one scalar reward), ``pad_token_id`` set;
  the file-free byte tokenizer ``ByT5Tokenizer()``;
* explicit-prompt preference rows ``{"prompt", "chosen", "rejected"}`` with the same synthetic text as
  bench_rm.py (response 0 chosen, response 1 rejected); TRL appends EOS to chosen/rejected and
  tokenizes prompt + response, so every sequence is prompt + response + EOS tokens, two per pair;
* fp32, AdamW (the torch for-loop kernel, as ``build_adamw`` picks on CPU; the same lr and eps),
  constant LR, no gradient clipping, no gradient checkpointing (RewardConfig turns it on by default),
  ``center_rewards_coefficient=None``, no eval, no logging, no checkpoints, dataloader workers 0.

What TRL does that we do not, kept because it is how RewardTrainer trains: every step it gathers the
rewards for min/mean/max/accuracy/margin metrics and counts tokens (``.item()`` host syncs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings

# The same rows as ours/plain (bench_rm.py and bench_sft.py import only the stdlib at top level, so this
# works inside the TRL virtualenv; this script's folder is on sys.path).
from bench_rm import make_comparison_rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--response-len", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--adam-eps", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    warnings.filterwarnings("ignore")

    import datasets
    import torch
    import transformers
    import trl
    from transformers import ByT5Tokenizer, GPT2Config, GPT2ForSequenceClassification, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()

    class ByteTokenizer(ByT5Tokenizer):
        """ByT5's byte tokenizer without its automatic trailing EOS: the sequence carries the one EOS that
        RewardTrainer appends as text, as our Policy tokenizes prompt + response + EOS."""

        def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
            return token_ids_0 + (token_ids_1 or [])

    tok = ByteTokenizer()
    torch.manual_seed(args.seed)
    config = GPT2Config(n_layer=4, n_embd=256, n_head=4, vocab_size=len(tok), n_positions=512,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0,
                        num_labels=1, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                        bos_token_id=tok.eos_token_id)
    model = GPT2ForSequenceClassification(config)

    total = args.warmup + args.steps
    rows = make_comparison_rows(args.batch * total, 2, args.prompt_len, args.response_len, args.seed)
    data = datasets.Dataset.from_list([{"prompt": r["prompt"], "chosen": r["responses"][0],
                                        "rejected": r["responses"][1]} for r in rows])

    starts: list[float] = []
    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            starts.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        cfg = RewardConfig(
            output_dir=out, max_steps=total, per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=1, learning_rate=args.lr, lr_scheduler_type="constant",
            warmup_steps=0, weight_decay=0.0, optim="adamw_torch", adam_epsilon=args.adam_eps,
            max_grad_norm=0.0, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
            center_rewards_coefficient=None, disable_dropout=True, max_length=None, dataset_num_proc=None,
            eval_strategy="no", save_strategy="no", logging_strategy="no", report_to="none",
            disable_tqdm=True, dataloader_num_workers=0, dataloader_drop_last=True, seed=args.seed,
            data_seed=args.seed,
        )
        trainer = RewardTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok,
                                callbacks=[Clock()])
        # The tokenized pairs must be what the other two methods see: two sequences of prompt + response +
        # EOS, the prompt's bytes first.
        tokens_per_sequence = args.prompt_len + args.response_len + 1
        for row, raw in zip(trainer.train_dataset, rows):
            prompt_ids = list(tok(raw["prompt"], add_special_tokens=False)["input_ids"])
            for key in ("chosen_ids", "rejected_ids"):
                ids = row[key]
                if (len(ids) != tokens_per_sequence or ids[-1] != tok.eos_token_id
                        or ids[: args.prompt_len] != prompt_ids):
                    sys.exit(f"TRL tokenized a {key[:-4]} sequence to {len(ids)} tokens (last id {ids[-1]}), "
                             f"expected {tokens_per_sequence} (the {args.prompt_len} prompt bytes first, "
                             f"EOS last)")
        if trainer.model.config.pad_token_id != tok.pad_token_id or trainer.args.gradient_checkpointing:
            sys.exit("RewardTrainer changed pad_token_id or turned gradient checkpointing on")
        sequences: list[int] = []  # sequences per forward, as bench_rm.SequenceCounter counts ours
        model.register_forward_pre_hook(lambda m, a, kw: sequences.append(int(kw["input_ids"].shape[0])),
                                        with_kwargs=True)
        trainer.train()

    n = len(ends) - args.warmup
    if n < 1 or args.warmup < 1:
        sys.exit(f"ran {len(ends)} steps; need warmup >= 1 and at least one measured step")
    wall = ends[-1] - ends[args.warmup - 1]  # full cycles: data, hooks, step (as bench_sft.StepClock)
    steps = [e - s for s, e in zip(starts[args.warmup:], ends[args.warmup:])]
    params = list(model.parameters())
    result = {
        "measured_steps": n, "wall_s": wall, "in_step_s": sum(steps),
        "step_ms_median": 1e3 * statistics.median(steps), "step_ms": [round(1e3 * t, 2) for t in steps],
        "samples_per_s": n * args.batch / wall,
        "tokens_per_s": n * args.batch * 2 * tokens_per_sequence / wall,
        "sequences_per_step": sequences[0] if len(set(sequences)) == 1 else sorted(set(sequences)),
        "n_params": sum(q.numel() for q in params),
        "n_trainable": sum(q.numel() for q in params if q.requires_grad),
        "torch_threads": torch.get_num_threads(),
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__,
                     "torch": torch.__version__, "datasets": datasets.__version__},
    }
    print("BENCH_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
