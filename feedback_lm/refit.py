"""Online reward-model refits during PPO (Ziegler et al. 2019, step 4 of the online loop).

Every ``every`` PPO iterations: sample ``k`` completions for ``prompts`` fresh training prompts from the
CURRENT policy, label them with the labeler (the simulated one by default; anything implementing
:class:`feedback_lm.labelers.Labeler`), append them to the comparison set (written to
``<run dir>/online_labels.jsonl``), refit the reward model (a fresh scalar head, ``epochs`` passes over ALL
labels so far with the ranking loss) and continue PPO with it. Every refit starts again from the
reward model's backbone as it was loaded (Ziegler et al. 2019 retrain "a fresh random head on top of
the initial model" each time; our initial model is the reward model the run started with, whose
backbone may differ from the policy's, so we keep its weights rather than the policy's). The labels the reward model was first
trained on can seed the set (``initial_labels``), so a refit never forgets them.

**People instead of the simulated labeler** (``campaign: <dir>``, a campaign made with
``python -m feedback_lm.label create``): the samples are queued in the campaign's store for the labeling
web app (``Store.enqueue``) instead of being labeled on the spot, and each refit uses everything people
have labeled so far (``Store.export_labeled``) plus the initial labels. Labels arrive asynchronously, so
a refit with nothing new simply refits on what there is.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from feedback_lm.data.comparisons import Comparison, load_comparisons, write_comparisons
from feedback_lm.errors import UserError
from feedback_lm.reward_head import RewardScorer, pairwise_accuracy, ranking_loss


@dataclass
class RefitConfig:
    """``algo.refit`` (see the module docstring). ``every=None`` switches refits off."""

    every: int | None = None
    prompts: int = 64
    k: int = 4
    temperature: float = 1.0
    max_new_tokens: int = 32
    labeler: Any = None  # a Labeler; None = SimulatedLabeler(task, mode="rank")
    campaign: str | None = None  # a labeling campaign dir: queue samples for people instead
    task: str | None = None
    initial_labels: str | None = None
    epochs: int = 1
    lr: float = 3e-4
    batch_size: int = 16
    seed: int = 0


def refit_reward_model(rm: RewardScorer, comparisons: Sequence[Comparison], epochs: int = 1, lr: float = 3e-4,
                       batch_size: int = 16, seed: int = 0) -> dict[str, float]:
    """Refit ``rm`` (a :class:`feedback_lm.reward_head.RewardScorer`) on ``comparisons``: a fresh head,
    then ``epochs`` shuffled passes with the ranking loss (all C(K,2) pairs per prompt, InstructGPT §3.5).

    Returns:
        ``{"loss": last epoch's mean loss, "accuracy": pairwise accuracy on the set after the refit}``.
    """
    if not comparisons:
        raise UserError("reward-model refit: no comparisons to fit")
    rm.reset_head()
    params = [p for p in rm.parameters() if p.requires_grad] or None
    if params is None:  # loaded frozen for scoring: the refit trains the whole model again
        rm.requires_grad_(True)
        params = [p for p in rm.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, eps=1e-5)
    rng = random.Random(seed)
    order = list(range(len(comparisons)))
    was_training = rm.training
    rm.eval()  # dropout off (Ziegler et al. 2019); gradients still flow
    losses: list[float] = []
    for _ in range(epochs):
        rng.shuffle(order)
        losses = []
        for s in range(0, len(order), batch_size):
            batch = [comparisons[i] for i in order[s: s + batch_size]]
            loss = ranking_loss(rm.batch_rewards(batch), [c.tiers for c in batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    rm.requires_grad_(False)
    correct = total = 0
    with torch.no_grad():
        for s in range(0, len(comparisons), 64):
            batch = list(comparisons[s: s + 64])
            c, t = pairwise_accuracy(rm.batch_rewards(batch), [x.tiers for x in batch])
            correct, total = correct + c, total + t
    rm.train(was_training)
    return {"loss": sum(losses) / max(1, len(losses)), "accuracy": correct / max(1, total)}


class OnlineRefitter:
    """Keeps the growing comparison set and runs collect -> label -> refit for a PPO module."""

    def __init__(self, cfg: RefitConfig, reward_fn, run_dir: str | Path):
        if not hasattr(reward_fn, "model"):
            raise UserError("algo.refit needs a trained reward model as the reward (reward=model "
                            "reward.path=<rm run>/model): there is nothing to refit in a verifier")
        if cfg.k < 2:
            raise UserError("algo.refit.k must be >= 2 (a comparison needs two responses)")
        self.cfg, self.reward_fn = cfg, reward_fn
        self.out = Path(run_dir) / "online_labels.jsonl"
        self.comparisons: list[Comparison] = list(load_comparisons(cfg.initial_labels)) if cfg.initial_labels else []
        self.initial = list(self.comparisons)
        self.initial_backbone = {k: v.detach().cpu().clone() for k, v in reward_fn.model.policy.state_dict().items()}
        self.num_initial = len(self.comparisons)
        self.store = None
        if cfg.campaign:
            from feedback_lm.label.store import open_campaign

            self.store = open_campaign(cfg.campaign)
        elif cfg.labeler is None:
            from feedback_lm.labelers import SimulatedLabeler

            if not cfg.task:
                raise UserError("algo.refit.task: the task whose verifier labels the samples (e.g. word_sorting)")
            cfg.labeler = SimulatedLabeler(cfg.task, mode="rank", seed=cfg.seed)
        self.rng = random.Random(cfg.seed)

    def due(self, iteration: int) -> bool:
        return bool(self.cfg.every) and iteration > 0 and iteration % self.cfg.every == 0

    @torch.no_grad()
    def collect(self, policy, rows: Sequence[dict[str, str]], iteration: int) -> int:
        """Sample K responses for ``cfg.prompts`` random training rows and label them; returns new rows."""
        cfg = self.cfg
        picked = self.rng.sample(list(rows), min(cfg.prompts, len(rows)))
        prompts = [r["prompt"] for r in picked]
        device = next(policy.model.parameters()).device
        ids, mask = (x.to(device) for x in policy.encode_prompts(prompts))
        gen = policy.generate(ids, mask, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                              num_return_sequences=cfg.k)
        texts = policy.decode(gen.response_ids, gen.response_mask)
        sampling = {"temperature": cfg.temperature, "top_k": 0, "top_p": 1.0, "max_new_tokens": cfg.max_new_tokens,
                    "k": cfg.k}
        if self.store is not None:  # people label them in the web app; refits read what is labeled so far
            for j, row in enumerate(picked):
                self.store.enqueue(row["prompt"], texts[j * cfg.k:(j + 1) * cfg.k],
                                   {"source": "online", "ppo_iteration": iteration, "sampling": sampling,
                                    "seed": cfg.seed, "target": row.get("target")})
            labeled = self.store.export_labeled(include_gold=False)
            self.comparisons = self.initial + labeled
            write_comparisons(self.out, labeled)
            return len(picked)
        added = 0
        for j, row in enumerate(picked):
            responses = texts[j * cfg.k:(j + 1) * cfg.k]
            label = cfg.labeler.label(row["prompt"], responses, row.get("target"))
            if not label.has_pairs:
                continue
            meta = {**label.meta, "source": "online", "ppo_iteration": iteration, "sampling": sampling,
                    "seed": cfg.seed}
            self.comparisons.append(Comparison(prompt=row["prompt"], responses=responses, tiers=label.tiers,
                                               best=label.best, meta=meta))
            added += 1
        write_comparisons(self.out, self.comparisons[self.num_initial:])
        return added

    def refit(self) -> dict[str, float]:
        cfg = self.cfg
        if not self.comparisons:  # every sample so far tied (e.g. all wrong): nothing to learn from yet
            return {"loss": float("nan"), "accuracy": float("nan")}
        self.reward_fn.model.policy.load_state_dict(self.initial_backbone)  # a fresh start, not a fine-tune
        with torch.enable_grad():
            return refit_reward_model(self.reward_fn.model, self.comparisons, cfg.epochs, cfg.lr, cfg.batch_size,
                                      seed=self.rng.randrange(2**31))
