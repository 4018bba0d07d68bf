"""The TRL side of bench/bench_sft.py: TRL's ``SFTTrainer`` on the same SFT workload, on CPU.

Runs inside ``bench/.venv-trl`` (torch 2.13 CPU + trl 1.16; bench_sft.py creates it), so it imports
nothing from this project. Prints one line ``BENCH_RESULT {json}``.

Workload, matched to the "ours"/"plain" runs of bench_sft.py:
* tiny GPT-2 built from config with random weights (4 layers, 256 wide, 4 heads, vocab 384, dropout 0
  as our tiny presets set it) and the file-free byte tokenizer ``ByT5Tokenizer()``;
* prompt-completion rows (so TRL trains with completion-only loss), the same synthetic text as
  bench_sft.py; each completion ends in the EOS token, so a sample is prompt + response + EOS tokens;
* no packing, fp32, AdamW (the torch for-loop kernel, as ``build_adamw`` picks on CPU), constant LR,
  no gradient clipping (Lightning clips nothing unless asked), no eval, no logging, no checkpoints,
  dataloader workers 0.

What TRL does that we do not, kept because it is how SFTTrainer trains: its chunked "fused LM head"
also computes per-token entropy and top-1 accuracy for its metrics (with ``.item()`` syncs), and it
computes log-probs at every position (the prompt positions are masked out of the loss afterwards).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings

# The same rows as ours/plain: one generator, imported (bench_sft.py imports only the stdlib at top
# level, so this works inside the TRL virtualenv; this script's folder is on sys.path).
from bench_sft import make_rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--response-len", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    warnings.filterwarnings("ignore")

    import datasets
    import torch
    import transformers
    import trl
    from transformers import ByT5Tokenizer, GPT2Config, GPT2LMHeadModel, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()

    class ByteTokenizer(ByT5Tokenizer):
        """ByT5's byte tokenizer without its automatic trailing EOS, so that a prompt tokenizes to its bytes
        (a clean prefix of prompt + completion, as our Policy tokenizes it) and the completion carries the
        one EOS it ends with."""

        def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
            return token_ids_0 + (token_ids_1 or [])

    tok = ByteTokenizer()
    torch.manual_seed(args.seed)
    config = GPT2Config(n_layer=4, n_embd=256, n_head=4, vocab_size=len(tok), n_positions=512,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0,
                        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                        bos_token_id=tok.eos_token_id)
    model = GPT2LMHeadModel(config)

    total = args.warmup + args.steps
    rows = make_rows(args.batch * total, args.prompt_len, args.response_len, args.seed)
    data = datasets.Dataset.from_list([{"prompt": r["prompt"], "completion": r["response"] + tok.eos_token}
                                       for r in rows])

    starts: list[float] = []
    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            starts.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        cfg = SFTConfig(
            output_dir=out, max_steps=total, per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=1, learning_rate=args.lr, lr_scheduler_type="constant",
            warmup_steps=0, weight_decay=0.0, optim="adamw_torch", max_grad_norm=0.0, use_cpu=True,
            bf16=False, fp16=False, packing=False, completion_only_loss=True, max_length=None,
            dataset_num_proc=None,
            eval_strategy="no", save_strategy="no", logging_strategy="no", report_to="none",
            disable_tqdm=True, dataloader_num_workers=0, dataloader_drop_last=True, seed=args.seed,
            data_seed=args.seed,
        )
        trainer = SFTTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok,
                             callbacks=[Clock()])
        # The tokenized rows must be what the other two methods see: prompt + response + EOS, with the
        # loss on the response + EOS only.
        tokens_per_sample = args.prompt_len + args.response_len + 1
        for row in trainer.train_dataset:
            trained = sum(label != -100 for label in row["labels"])
            if (len(row["input_ids"]) != tokens_per_sample or trained != args.response_len + 1
                    or row["input_ids"][-1] != tok.eos_token_id):
                sys.exit(f"TRL tokenized a sample to {len(row['input_ids'])} tokens ({trained} in the loss, "
                         f"last id {row['input_ids'][-1]}), expected {tokens_per_sample} "
                         f"({args.response_len + 1} in the loss, ending in EOS)")
        trainer.train()

    n = len(ends) - args.warmup
    if n < 1 or args.warmup < 1:
        sys.exit(f"ran {len(ends)} steps; need warmup >= 1 and at least one measured step")
    wall = ends[-1] - ends[args.warmup - 1]  # full cycles: data, hooks, step (as bench_sft.StepClock)
    steps = [e - s for s, e in zip(starts[args.warmup:], ends[args.warmup:])]
    result = {
        "measured_steps": n, "wall_s": wall, "in_step_s": sum(steps),
        "step_ms_median": 1e3 * statistics.median(steps),
        "samples_per_s": n * args.batch / wall, "tokens_per_s": n * args.batch * tokens_per_sample / wall,
        "n_params": sum(p.numel() for p in model.parameters()), "torch_threads": torch.get_num_threads(),
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__,
                     "torch": torch.__version__, "datasets": datasets.__version__},
    }
    print("BENCH_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
