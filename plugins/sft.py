"""Supervised fine-tuning on demonstrations (docs/algorithms.md §1; InstructGPT §3.5, arXiv 2203.02155).

Per-token cross-entropy on the response tokens (EOS included), prompt tokens masked out, for causal
and encoder-decoder models alike (the policy aligns logits with response tokens, docs/algorithms.md §0.3).

Run: ``python train.py algo=sft model=tiny-t5 data=word_sorting``

Logs: ``train/loss``, ``train/tokens`` (target tokens per step), ``val/loss``, ``val/accuracy``
(greedy decoding, normalised exact match against the target), and a table of held-out samples.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import lightning as L
import torch

from feedback_lm import ops
from feedback_lm.checks import check_args
from feedback_lm.display import log_samples, print_samples
from feedback_lm.evaluation import greedy_eval
from feedback_lm.models import ModelConfig
from feedback_lm.optim import SCHEDULES, build_adamw, build_scheduler
from feedback_lm.policy import Policy

NORMALIZATIONS = ("token_mean", "sequence_mean", "sum")


def sft_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
             normalize: str = "token_mean") -> torch.Tensor:
    """Masked negative log-likelihood of the targets (docs/algorithms.md §1.2).

    Args:
        logits: ``[B,R,V]`` aligned so that ``logits[:, t]`` predicts ``targets[:, t]``.
        targets: ``[B,R]`` response ids (EOS included).
        mask: ``[B,R]`` bool, True on target tokens.
        normalize: ``token_mean`` (HF convention, default), ``sequence_mean`` (mean over sequences of
            each sequence's token mean) or ``sum``.

    Returns:
        Scalar loss (fp32).
    """
    nll = -ops.gather_logprobs(logits, targets)  # fp32 log-softmax (docs/algorithms.md §0.4)
    if normalize == "token_mean":
        return ops.masked_mean(nll, mask)
    if normalize == "sequence_mean":
        return ops.masked_mean(nll, mask, dim=-1).mean()
    if normalize == "sum":
        return ops.masked_sum(nll, mask)
    raise ValueError(f"unknown normalize '{normalize}'; choose one of {NORMALIZATIONS}")


class SFT(L.LightningModule):
    """Supervised fine-tuning.

    Args:
        policy: the model to train (``conf/model/*.yaml``).
        lr: peak learning rate (AdamW).
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        schedule: ``cosine`` (decay to ``min_lr_ratio`` of the peak, InstructGPT C.1), ``linear``, ``constant``.
        warmup_steps: linear warmup steps.
        min_lr_ratio: final LR as a fraction of the peak.
        normalize: loss normalisation, see :func:`sft_loss`.
        max_new_tokens: generation budget for validation.
        num_samples_shown: held-out samples printed after each validation.
    """

    DATA_KIND: ClassVar[str] = "tasks"

    def __init__(self, policy: ModelConfig | Mapping[str, Any], lr: float = 1e-5, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), schedule: str = "cosine", warmup_steps: int = 0,
                 min_lr_ratio: float = 0.1, normalize: str = "token_mean", max_new_tokens: int = 64,
                 num_samples_shown: int = 5):
        super().__init__()
        check_args("algo", lr=(lr, "> 0"), weight_decay=(weight_decay, ">= 0"), schedule=(schedule, SCHEDULES),
                   warmup_steps=(warmup_steps, ">= 0"), min_lr_ratio=(min_lr_ratio, "[0, 1]"),
                   normalize=(normalize, NORMALIZATIONS), max_new_tokens=(max_new_tokens, ">= 1"),
                   num_samples_shown=(num_samples_shown, ">= 0"))
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"unknown normalize '{normalize}'; choose one of {NORMALIZATIONS}")
        self.model_config = ModelConfig.coerce(policy)
        self.save_hyperparameters()
        self.hparams.policy = self.model_config.to_dict()  # plain data in checkpoints and hparams.yaml
        self._samples: list[dict[str, Any]] = []

    def configure_model(self) -> None:
        if not hasattr(self, "policy"):
            self.policy = Policy.from_config(self.model_config)

    # ------------------------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, list[str]], batch_idx: int) -> torch.Tensor:
        enc = self.policy.encode_batch(batch["prompt"], batch["response"], self.device)
        logits = self.policy(**enc).logits
        loss = sft_loss(logits, enc["response_ids"], enc["response_mask"], self.hparams.normalize)
        n = len(batch["prompt"])
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/tokens", enc["response_mask"].sum().float(), batch_size=n, reduce_fx="sum")
        return loss

    # ----------------------------------------------------------------------------------- validation
    def validation_step(self, batch: dict[str, list[str]], batch_idx: int) -> None:
        enc = self.policy.encode_batch(batch["prompt"], batch["response"], self.device)
        loss = sft_loss(self.policy(**enc).logits, enc["response_ids"], enc["response_mask"])
        outputs, correct = greedy_eval(self.policy, batch["prompt"], batch["target"],
                                       self.hparams.max_new_tokens, self.device)
        n = len(outputs)
        self.log("val/loss", loss, batch_size=n, sync_dist=True)
        self.log("val/accuracy", correct.mean().to(self.device), batch_size=n, sync_dist=True, prog_bar=True)
        if batch_idx == 0:
            k = self.hparams.num_samples_shown
            self._samples = [{"prompt": p, "output": o, "target": t, "correct": bool(c)} for p, o, t, c in
                             zip(batch["prompt"][:k], outputs[:k], batch["target"][:k], correct[:k].tolist())]

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        print_samples(self._samples, title=f"held-out samples (step {self.global_step})")
        log_samples(self.loggers, "val/samples", self._samples, self.global_step)

    # ------------------------------------------------------------------------------------ optimizer
    def configure_optimizers(self):
        hp = self.hparams
        opt = build_adamw(self.parameters(), hp.lr, hp.weight_decay, hp.betas)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = build_scheduler(opt, total, hp.schedule, hp.warmup_steps, hp.min_lr_ratio)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def save_pretrained(self, directory: str) -> None:
        """Write the trained model in Hugging Face format (loadable with ``model.name_or_path=``)."""
        self.policy.model.save_pretrained(directory)
        self.policy.tokenizer.save_pretrained(directory)
