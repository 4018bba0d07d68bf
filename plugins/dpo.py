"""Direct Preference Optimization (DPO; Rafailov et al. 2023, arXiv 2305.18290) with its cDPO and IPO
(Azar et al. 2023, arXiv 2310.12036) variants, on pairs or on rankings of K answers.

The policy learns from comparisons directly, with no reward model and no sampling: for a preferred y_w
and a dispreferred y_l,

    h = (log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))      (sums over tokens, EOS included)
    DPO   −log σ(β·h)                                                            (DPO Eq. 7)
    cDPO  −(1−ε)·log σ(β·h) − ε·log σ(−β·h)                                      (ε = label_smoothing)
    IPO   (h − 1/(2β))²                                                          (IPO Eq. 17; h as a SUM, our choice)

π_ref is the initial policy: a frozen copy, or under LoRA the same weights with the adapters off. The
implicit reward is ``r(y) = β·(log π(y|x) − log π_ref(y|x))``.

Rankings of K > 2 answers (``{"ranking": [...]}`` rows, ties allowed), our extension: ``ranking=pairs``
(default) averages the loss over every ordered, non-tied pair of a prompt, then over prompts (the
InstructGPT reward-model batching, K forward passes per prompt); ``ranking=plackett_luce`` (no ties) uses
``−Σ_{i<K} log( exp(r_τ(i)) / Σ_{j≥i} exp(r_τ(j)) )`` over the best-first order τ (DPO App. A.3).

Run: ``python train.py algo=dpo data=comparisons`` (batches are ``list[Comparison]``; the generated
comparisons of the default task, or ``data.source=jsonl data.path=labels.jsonl``). Start from an SFT model:
``model.name_or_path=<sft run>/model``.

Logs: ``train/loss``, ``dpo/reward_chosen``, ``dpo/reward_rejected`` (mean implicit reward of the best and
worst tiers), ``dpo/reward_accuracy`` (share of pairs ordered right by the implicit reward),
``dpo/reward_margin``; ``val/loss``, ``val/reward_accuracy``, ``val/reward_margin`` on held-out comparisons,
and a table of the policy's greedy answers to the first ``num_samples_shown`` held-out prompts beside their
preferred response (printed, and sent to wandb / TensorBoard).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F

from feedback_lm.checks import check_args
from feedback_lm.data.comparisons import Comparison
from feedback_lm.display import log_samples, print_samples
from feedback_lm.errors import UserError
from feedback_lm.models import ModelConfig
from feedback_lm.online import sequence_logprobs
from feedback_lm.optim import build_adamw, build_scheduler
from feedback_lm.policy import Policy
from feedback_lm.reference import frozen_reference, reference_policy, save_policy
from feedback_lm.reward_head import comparison_rewards, pair_index, pairwise_accuracy

LOSS_TYPES = ("sigmoid", "ipo")
RANKINGS = ("pairs", "plackett_luce")


# ------------------------------------------------------------------------------------ pure functions
def dpo_pair_loss(h: torch.Tensor, beta: float, loss_type: str = "sigmoid",
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-pair loss of the log-ratio difference ``h`` (see the module docstring), elementwise, fp32.

    Args:
        h: ``[n]`` ``(s_w − s_ref_w) − (s_l − s_ref_l)``.
        loss_type: ``sigmoid`` (DPO; cDPO with ``label_smoothing`` ε > 0) or ``ipo``.
    """
    h = h.float()
    if loss_type == "ipo":
        return (h - 1.0 / (2.0 * beta)) ** 2
    return (1.0 - label_smoothing) * F.softplus(-beta * h) + label_smoothing * F.softplus(beta * h)


def plackett_luce_loss(rewards: torch.Tensor, order: Sequence[int]) -> torch.Tensor:
    """``−Σ_{i<K} log softmax(r[τ(i:)])[0]`` for one prompt: the Plackett-Luce likelihood of the best-first
    order τ under the rewards (DPO App. A.3; K=2 is Bradley-Terry).

    Args:
        rewards: ``[K']`` implicit rewards (entries not in ``order`` are ignored).
        order: τ, best first, a permutation of the K ranked answers.
    """
    r = rewards.float()[torch.as_tensor(list(order), device=rewards.device)]
    tail_lse = torch.logcumsumexp(r.flip(0), 0).flip(0)  # logsumexp of r[i:] for every i
    return -(r - tail_lse)[:-1].sum()


def dpo_loss(logratios: torch.Tensor, rankings: Sequence[Sequence[Sequence[int]]], beta: float,
             loss_type: str = "sigmoid", label_smoothing: float = 0.0, ranking: str = "pairs") -> torch.Tensor:
    """The DPO-family loss of a batch of rankings: the mean over prompts of each prompt's loss.

    Args:
        logratios: ``[B,Kmax]`` ``log π(y|x) − log π_ref(y|x)`` (sums over tokens); entries beyond a
            prompt's K are never read.
        rankings: per prompt, best-first tiers of answer indices (``[[1], [0]]`` for a chosen/rejected pair).
        ranking: ``pairs`` (mean over the ordered, non-tied pairs) or ``plackett_luce`` (no ties).
    """
    if ranking == "plackett_luce":
        if loss_type != "sigmoid" or label_smoothing:
            raise UserError("algo.ranking=plackett_luce is a likelihood of the order: use it with "
                            "algo.loss_type=sigmoid and algo.label_smoothing=0")
        if any(len(t) != 1 for tiers in rankings for t in tiers):
            raise UserError("algo.ranking=plackett_luce needs rankings without ties; use algo.ranking=pairs")
        losses = [plackett_luce_loss(beta * logratios[b], [t[0] for t in tiers]) for b, tiers in enumerate(rankings)]
        return torch.stack(losses).mean()
    b, w, lo, weight = pair_index(rankings, logratios.device)
    h = logratios[b, w] - logratios[b, lo]
    return (weight * dpo_pair_loss(h, beta, loss_type, label_smoothing)).sum() / len(rankings)


def implicit_reward_stats(logratios: torch.Tensor, rankings: Sequence[Sequence[Sequence[int]]],
                          beta: float) -> dict[str, torch.Tensor]:
    """Mean implicit reward ``β·logratio`` of the best and worst tiers, their margin, and the share of
    ordered pairs whose implicit rewards are in the labelled order (ties count as wrong)."""
    r = beta * logratios.detach().float()
    chosen = torch.stack([r[i, tiers[0]].mean() for i, tiers in enumerate(rankings)]).mean()
    rejected = torch.stack([r[i, tiers[-1]].mean() for i, tiers in enumerate(rankings)]).mean()
    right, total = pairwise_accuracy(r, rankings)
    return {"reward_chosen": chosen, "reward_rejected": rejected, "reward_margin": chosen - rejected,
            "reward_accuracy": torch.tensor(right / max(total, 1), device=r.device)}


# ------------------------------------------------------------------------------------------ module
class DPO(L.LightningModule):
    """DPO / cDPO / IPO on comparisons (``data=comparisons``: batches are ``list[Comparison]``).

    Args:
        policy: model config (``conf/model``); dropout is set to 0 (as TRL does for DPO).
        beta: β, the strength of the implicit KL constraint.
        loss_type: ``sigmoid`` (DPO, cDPO) or ``ipo``.
        label_smoothing: cDPO's ε, the assumed share of flipped labels (0 = DPO).
        ranking: ``pairs`` or ``plackett_luce`` for rankings of K answers (see the module docstring).
        lr, weight_decay, warmup_steps, schedule, min_lr_ratio: AdamW and its LR schedule (per step).
        max_grad_norm: gradient clipping (None = off).
        max_new_tokens, num_samples_shown: the held-out sample table (greedy answers to the first
            ``num_samples_shown`` prompts of the first validation batch; 0: no table).
    """

    DATA_KIND: ClassVar[str] = "comparisons"

    def __init__(self, policy: ModelConfig | Mapping[str, Any], beta: float = 0.1, loss_type: str = "sigmoid",
                 label_smoothing: float = 0.0, ranking: str = "pairs", lr: float = 1e-6, weight_decay: float = 0.0,
                 warmup_steps: int = 150, schedule: str = "constant", min_lr_ratio: float = 0.0,
                 max_grad_norm: float | None = 1.0, max_new_tokens: int = 64, num_samples_shown: int = 5):
        super().__init__()
        check_args("algo", max_new_tokens=(max_new_tokens, ">= 1"), num_samples_shown=(num_samples_shown, ">= 0"),
                   beta=(beta, "> 0"), label_smoothing=(label_smoothing, "[0, 0.5)"), lr=(lr, "> 0"),
                   weight_decay=(weight_decay, ">= 0"), warmup_steps=(warmup_steps, ">= 0"),
                   min_lr_ratio=(min_lr_ratio, "[0, 1]"), max_grad_norm=(max_grad_norm, "> 0"))
        if loss_type not in LOSS_TYPES:
            raise UserError(f"algo.loss_type={loss_type!r}: use one of {LOSS_TYPES}")
        if ranking not in RANKINGS:
            raise UserError(f"algo.ranking={ranking!r}: use one of {RANKINGS}")
        self.model_config = ModelConfig.coerce(policy)
        self.model_config.dropout = 0.0
        self.save_hyperparameters()
        self.hparams.policy = self.model_config.to_dict()

    def configure_model(self) -> None:
        if hasattr(self, "policy"):
            return
        self.policy = Policy.from_config(self.model_config)
        self.ref = frozen_reference(self.policy)  # the initial policy; None under LoRA (adapters off)

    # ------------------------------------------------------------------------------------------ loss
    def _logratios(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """``log π(y|x) − log π_ref(y|x)`` per (prompt, response): ``[N]``, grad through π only."""
        with reference_policy(self.policy, self.ref) as ref:
            ref_lp = sequence_logprobs(ref, prompts, responses)
        return sequence_logprobs(self.policy, prompts, responses) - ref_lp

    def _step(self, batch: list[Comparison]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not batch or not isinstance(batch[0], Comparison):
            raise UserError("algo=dpo trains on comparisons: add data=comparisons (batches of list[Comparison])")
        hp = self.hparams
        logratios = comparison_rewards(self._logratios, batch)  # [B,Kmax], -inf beyond each K
        rankings = [c.tiers for c in batch]
        loss = dpo_loss(logratios, rankings, hp.beta, hp.loss_type, hp.label_smoothing, hp.ranking)
        return loss, implicit_reward_stats(logratios, rankings, hp.beta)

    def training_step(self, batch: list[Comparison], batch_idx: int) -> torch.Tensor:
        loss, stats = self._step(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        self.log_dict({f"dpo/{k}": v for k, v in stats.items()}, batch_size=len(batch))
        return loss

    def validation_step(self, batch: list[Comparison], batch_idx: int) -> None:
        loss, stats = self._step(batch)
        n = len(batch)
        self.log("val/loss", loss, batch_size=n, sync_dist=True)
        self.log("val/reward_accuracy", stats["reward_accuracy"], batch_size=n, sync_dist=True, prog_bar=True)
        self.log("val/reward_margin", stats["reward_margin"], batch_size=n, sync_dist=True)
        k = self.hparams.num_samples_shown
        if batch_idx == 0 and k:
            shown = batch[:k]
            outputs = self.policy.generate_text([c.prompt for c in shown], max_new_tokens=self.hparams.max_new_tokens,
                                                do_sample=False)
            self._samples = [{"prompt": c.prompt, "output": o, "preferred": c.responses[c.tiers[0][0]]}
                             for c, o in zip(shown, outputs)]

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        samples = getattr(self, "_samples", [])
        print_samples(samples, title=f"held-out samples (step {self.global_step})")
        log_samples(self.loggers, "val/samples", samples, self.global_step)

    # ------------------------------------------------------------------------------------- optimizer
    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        clip = self.hparams.max_grad_norm if gradient_clip_val is None else gradient_clip_val
        if clip:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")

    def configure_optimizers(self):
        hp = self.hparams
        opt = build_adamw(self.parameters(), hp.lr, hp.weight_decay)
        total = max(1, int(min(self.trainer.estimated_stepping_batches, 2**62)))
        sched = build_scheduler(opt, total, hp.schedule, hp.warmup_steps, hp.min_lr_ratio)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def save_pretrained(self, directory: str) -> None:
        """The trained policy in Hugging Face format (LoRA adapters merged)."""
        save_policy(self.policy, directory)
