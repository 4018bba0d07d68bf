"""Self-correction (Welleck et al. 2022, "Generating Sequences by Learning to [Self-]Correct",
arXiv 2211.00053; docs/algorithms.md §6).

A fixed generator ``p0(y|x)`` and a trained corrector ``pθ(y'|y, x, f(y))``. The corrector reads
``x ⊕ SEP_H ⊕ y ⊕ SEP_F ⊕ f(y) ⊕ SEP_C`` and is trained with token-level cross-entropy on ``y' ⊕ EOS``
(docs/algorithms.md §6.1). Algorithm 1 (docs/algorithms.md §6.2), one Lightning step = one iteration:

1. collect: ``N`` generator samples for every prompt of the batch not yet in the pool
   (Initialization, Eq. 2: the pool of x is initialised the first time x is drawn), and one corrector
   sample per prompt from a uniformly drawn hypothesis of its pool (Exploration, Eq. 5);
2. score: value ``v`` and feedback ``f`` of every new output (``feedback_lm.values``);
3. buffer: into the pool, the shared ``RolloutBuffer`` in pool mode (capped, deduplicated per prompt);
4. update: Pairing (Eq. 3, strictly value-improving pairs within one prompt), then ``updates_per_step``
   minibatches of pairs drawn by the two-stage sampler of Eq. 4, ``P ∝ exp(α·Δv + β·s(y,y')) / Z(y)``
   (a hypothesis uniformly among those with a correction, then a correction by softmax).

Validation greedy-decodes ``y0`` from the generator and applies the corrector ``num_corrections``
times; fixed-k values and oracle-stop values (stop once ``v`` is maximal, which uses the gold answer)
are reported separately (docs/algorithms.md §6.5). With ``eval_generator_*`` set, the same corrector is also applied
to another generator's outputs (swapping generators, paper §4.3).

Run: ``python train.py algo=self_correct`` (tiny-t5 on generated word_sorting: the generator is a short
SFT run made inside the plugin, the corrector starts from it); ``model=tiny-gpt2`` for the other family.

Logs: ``train/loss``, ``self_correct/pool_size``, ``self_correct/pairs``, ``self_correct/hypotheses``,
``rollout/generator_value`` (new generator samples), ``rollout/explore_value`` and
``rollout/explore_gain`` (corrector samples and their gain over the hypothesis); at validation
``self_correct/value@t`` and ``self_correct/oracle_value@t`` for t = 0..k, ``self_correct/fixed``,
``self_correct/broken``, ``val/value`` (= value@k), ``val/accuracy`` (share maximal after k),
``val/generator_value``, ``val/generator_accuracy`` (and ``self_correct/swap_*`` for the swapped
generator); a plot of value vs number of corrections, ``self_correct_curve.png``, in the run directory.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch

from feedback_lm import ops
from feedback_lm.checks import check_args
from feedback_lm.checkpoint import load_state_dict_safely
from feedback_lm.display import print_samples
from feedback_lm.errors import UserError
from feedback_lm.models import ModelConfig
from feedback_lm.online import optimizer_step
from feedback_lm.optim import SCHEDULES, build_adamw, build_scheduler
from feedback_lm.policy import Policy, pad_sequences
from feedback_lm.rollout import Rollout, RolloutBuffer
from feedback_lm.values import ValueFn, build_value_fn, judge

CORRECTOR_INITS = ("generator", "scratch")


# ------------------------------------------------------------------------------------ pure functions
def improving_pairs(groups: Sequence[Hashable], values: Sequence[float],
                    keep_value: float | None = None) -> list[tuple[int, int]]:
    """Pairing, Eq. 3: every ``(i, j)`` with ``groups[i] == groups[j]`` and ``values[i] < values[j]``.

    Strictly improving (ties never pair) and never across prompts (docs/algorithms.md §6.2).

    Args:
        groups: ``[K]`` the prompt (or any key) of each pool entry.
        values: ``[K]`` their values.
        keep_value: [PROJECT, off by default] also pair every entry whose value reaches this (the value
            function's maximum) with itself, ``(i, i)``: "keep" pairs that teach the corrector to leave a
            right answer alone. Eq. 3 has none, so a corrector trained on it alone never sees a right
            hypothesis and rewrites right answers at inference.

    Returns:
        ``(hypothesis index, correction index)`` pairs, grouped by hypothesis in index order.
    """
    members: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    pairs = [(i, j) for i in range(len(groups)) for j in members[groups[i]] if values[i] < values[j]]
    if keep_value is not None:
        pairs += [(i, i) for i in range(len(groups)) if values[i] >= keep_value]
        pairs.sort(key=lambda p: p[0])  # keep the pairs grouped by hypothesis
    return pairs


def levenshtein(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Edit distance between two token sequences (insert, delete, substitute all cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def token_similarity(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """``s(y, y') = 1 - Levenshtein_tokens(y, y') / max(|y|, |y'|)`` in [0, 1] (docs/algorithms.md §6.4 [PROJECT]);
    1 for two empty sequences."""
    longest = max(len(a), len(b))
    return 1.0 if longest == 0 else 1.0 - levenshtein(a, b) / longest


def pair_probabilities(hyp_index: torch.Tensor, improvement: torch.Tensor, similarity: torch.Tensor,
                       alpha: float, beta: float) -> torch.Tensor:
    """Eq. 4: ``P[(x,y,y')] = exp(α·Δv + β·s) / Z(y)`` times the uniform choice of the hypothesis.

    ``Z(y)`` sums over the corrections of the same hypothesis only, so every hypothesis that has a
    correction gets the same total mass ``1/H`` (docs/algorithms.md §6.2), however many corrections it has.

    Args:
        hyp_index: ``[K]`` long, which hypothesis each candidate pair belongs to.
        improvement: ``[K]`` ``v(y') - v(y)`` (> 0).
        similarity: ``[K]`` ``s(y, y')``.
        alpha, beta: improvement and proximity weights.

    Returns:
        ``[K]`` fp32 probabilities that sum to 1.
    """
    logits = alpha * improvement.float() + beta * similarity.float()
    hyps, inverse = torch.unique(hyp_index, return_inverse=True)
    # log Z(y) per hypothesis: a segment logsumexp (max-shifted for stability)
    shift = torch.full((len(hyps),), -torch.inf).scatter_reduce(0, inverse, logits, "amax")
    z = torch.zeros(len(hyps)).index_add_(0, inverse, (logits - shift[inverse]).exp())
    within = (logits - shift[inverse]).exp() / z[inverse]
    return within / len(hyps)


def sample_pairs(hyp_index: torch.Tensor, improvement: torch.Tensor, similarity: torch.Tensor, alpha: float,
                 beta: float, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Two-stage sampler of Eq. 4: a hypothesis uniformly among those with a correction, then one of
    its corrections by softmax over ``α·Δv + β·s`` (docs/algorithms.md §6.2). Draws with replacement.

    Returns:
        ``[n]`` long indices into the ``K`` candidate pairs.
    """
    hyps, inverse = torch.unique(hyp_index, return_inverse=True)
    within = pair_probabilities(hyp_index, improvement, similarity, alpha, beta) * len(hyps)  # softmax per y
    # Stage 1: a hypothesis, uniformly. Stage 2: inverse-CDF sampling inside its segment of the pairs sorted
    # by hypothesis; each segment's probabilities sum to 1, so segment h spans (h, h+1] of the running sum.
    order = torch.argsort(inverse, stable=True)
    cum = within[order].double().cumsum(0)
    counts = torch.bincount(inverse, minlength=len(hyps))
    start = counts.cumsum(0) - counts
    h = torch.randint(len(hyps), (n,), generator=generator)
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    pos = torch.searchsorted(cum, h.double() + u, right=True)
    pos = torch.minimum(torch.maximum(pos, start[h]), start[h] + counts[h] - 1)  # rounding at segment ends
    return order[pos]


def corrector_prompt(prompt: str, hypothesis: str, feedback: str | None, sep_hypothesis: str = "\nHypothesis:",
                     sep_feedback: str = "\nFeedback:", sep_correction: str = "\nCorrection:",
                     layout: str = "prompt_first") -> str:
    """The corrector's input. ``prompt_first`` (docs/algorithms.md §6.1): ``x ⊕ SEP_H ⊕ y ⊕ SEP_F ⊕ f(y) ⊕ SEP_C``.
    ``prompt_last`` [PROJECT]: ``SEP_H ⊕ y ⊕ SEP_F ⊕ f(y) ⊕ "\n" ⊕ x`` (leading newlines of SEP_H dropped,
    no SEP_C): the input ends exactly as the generator's prompt does, so a corrector started from the
    generator's weights starts out answering the question. The SEP_F part is dropped when ``feedback``
    is None (no feedback used); an empty feedback string ("nothing wrong found") is kept."""
    fb = "" if feedback is None else f"{sep_feedback} {feedback}".rstrip()
    if layout == "prompt_first":
        return f"{prompt}{sep_hypothesis}{hypothesis}{fb}{sep_correction}"
    if layout == "prompt_last":
        return f"{sep_hypothesis.lstrip(chr(10))}{hypothesis}{fb}\n{prompt}"
    raise UserError(f"algo.layout={layout!r}: use prompt_first (docs/algorithms.md §6.1) or prompt_last")


def corrector_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``-log pθ(y'|y, x, f(y))``, token mean over the correction's tokens (docs/algorithms.md §1.2 / §6.2).

    Args:
        logits: ``[B,R,V]`` aligned with ``targets`` (``Policy.forward``); x, y and f live in the
            prompt and get no loss.
        targets: ``[B,R]`` the correction ``y' ⊕ EOS``.
        mask: ``[B,R]`` bool, True on the correction's tokens.
    """
    return -ops.masked_mean(ops.gather_logprobs(logits, targets), mask)


def correct_iteratively(outputs: Sequence[str], values: torch.Tensor, feedback: Sequence[str],
                        correct: Callable[[list[int], list[str], list[str]], list[str]],
                        judge_fn: Callable[[list[int], list[str]], tuple[torch.Tensor, list[str]]],
                        k: int, stop_value: float | None = None) -> tuple[torch.Tensor, list[list[str]]]:
    """Inference (docs/algorithms.md §6.2): ``y_{t+1} ~ q(pθ(·|y_t, x, f(y_t)))`` for t = 0..k-1.

    Args:
        outputs: ``B`` generator outputs ``y_0``; values ``[B]`` and feedback their ``v`` and ``f``.
        correct: ``(indices, outputs, feedback) -> corrected outputs`` for the items still running.
        judge_fn: ``(indices, outputs) -> (values [n], feedback)``.
        k: number of corrections.
        stop_value: oracle stop: an item stops once its value reaches this (None = fixed k). Only
            legitimate when v is available at test time (docs/algorithms.md §6.5).

    Returns:
        ``(values [k+1, B], outputs per step)``; a stopped item keeps its last value and output.
        ``correct`` is not called when every item has stopped.
    """
    current, cur_fb = list(outputs), list(feedback)
    trajectory, history = [values.float().clone()], [list(current)]
    for _ in range(k):
        running = [i for i in range(len(current))
                   if stop_value is None or float(trajectory[-1][i]) < stop_value]
        step_values = trajectory[-1].clone()
        if running:
            new = correct(running, [current[i] for i in running], [cur_fb[i] for i in running])
            v, f = judge_fn(running, new)
            for n, i in enumerate(running):
                current[i], cur_fb[i], step_values[i] = new[n], f[n], float(v[n])
        trajectory.append(step_values)
        history.append(list(current))
    return torch.stack(trajectory), history


def oracle_stop(values: torch.Tensor, stop_value: float) -> torch.Tensor:
    """The oracle-stop trajectory from a fixed-k one: each column frozen from the first step whose value
    reaches ``stop_value`` (corrections are independent per item, so this equals running with the oracle).

    Args:
        values: ``[k+1, B]`` values after 0..k corrections.
    """
    out = values.clone()
    for t in range(1, len(values)):
        done = out[t - 1] >= stop_value
        out[t] = torch.where(done, out[t - 1], values[t])
    return out


def correction_metrics(values: torch.Tensor, max_value: float) -> dict[str, float]:
    """Summaries of a ``[k+1, B]`` value trajectory: ``value@t`` (mean after t corrections),
    ``fixed`` (share not maximal at 0 and maximal at k), ``broken`` (maximal at 0, not at k),
    ``improved`` / ``worsened`` (share with v_k > v_0 / v_k < v_0)."""
    ok0, okk = values[0] >= max_value, values[-1] >= max_value
    out = {f"value@{t}": float(v) for t, v in enumerate(values.float().mean(1))}
    out.update(fixed=float((~ok0 & okk).float().mean()), broken=float((ok0 & ~okk).float().mean()),
               improved=float((values[-1] > values[0]).float().mean()),
               worsened=float((values[-1] < values[0]).float().mean()))
    return out


def explore(pool: Mapping[str, Sequence[Mapping[str, Any]]], prompts: Sequence[str],
            correct: Callable[[list[str], list[str], list[str]], list[str]],
            judge_fn: Callable[[list[str], list[str], list[str]], tuple[torch.Tensor, list[str]]],
            rng: random.Random) -> list[dict[str, Any]]:
    """Exploration, Eq. 5: for each prompt, a hypothesis drawn uniformly from its pool entry list,
    corrected once; the new entry carries its own ``v`` and ``f``.

    Args:
        pool: prompt -> entries with ``response``, ``feedback`` and ``target``.
        prompts: the prompts to explore (each must be in ``pool``).
        correct: ``(prompts, hypotheses, feedback) -> corrections``.
        judge_fn: ``(prompts, outputs, targets) -> (values [n], feedback)``.

    Returns:
        New entries ``{"prompt", "response", "target", "value", "feedback", "hypothesis_value"}``.
    """
    hyps = [rng.choice(pool[p]) for p in prompts]
    outs = correct(list(prompts), [h["response"] for h in hyps], [h["feedback"] for h in hyps])
    targets = [h["target"] for h in hyps]
    values, feedback = judge_fn(list(prompts), outs, targets)
    return [{"prompt": p, "response": o, "target": t, "value": float(v), "feedback": f,
             "hypothesis_value": float(h["value"])}
            for p, o, t, v, f, h in zip(prompts, outs, targets, values.tolist(), feedback, hyps)]


def sft_generator(policy: Policy, prompts: Sequence[str], responses: Sequence[str], steps: int, batch_size: int,
                  lr: float, seed: int) -> float:
    """Make the fixed generator: ``steps`` of SFT (docs/algorithms.md §1) on (prompt, response) demonstrations, AdamW
    at a constant ``lr``; the policy is frozen afterwards. Returns the last loss."""
    device = next(policy.parameters()).device
    policy.requires_grad_(True)
    opt = torch.optim.AdamW(policy.parameters(), lr=lr)
    rng = random.Random(seed)
    order: list[int] = []
    loss = torch.tensor(float("nan"))
    policy.train()
    for _ in range(steps):
        if len(order) < batch_size:
            order += rng.sample(range(len(prompts)), len(prompts))
        idx, order = order[:batch_size], order[batch_size:]
        enc = policy.encode_batch([prompts[i] for i in idx], [responses[i] for i in idx], device)
        loss = corrector_loss(policy(**enc).logits, enc["response_ids"], enc["response_mask"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    policy.requires_grad_(False)
    policy.eval()
    return float(loss)


# ------------------------------------------------------------------------------------------ module
class SelfCorrect(L.LightningModule):
    """A corrector trained on value-improving pairs of a fixed generator's outputs (docs/algorithms.md §6).

    Args:
        policy: the corrector's model (``conf/model/*.yaml``).
        generator: the generator's model config (default: the same as ``policy``).
        generator_path: load the generator from here instead: a Hugging Face name or directory (e.g. an
            SFT run's ``model/``) or an SFT ``.ckpt`` of ours (weights into the ``generator`` config).
        generator_sft_steps: if > 0, first fine-tune the generator on the data's demonstrations for this
            many steps (the embedded default's way to get a weak generator without files).
        generator_sft_lr / generator_sft_batch_size: that SFT's settings.
        corrector_init: ``generator`` (start from the generator's weights; needs the same architecture)
            or ``scratch`` (``policy`` as built).
        value: the value/feedback function, ``{"name": ..., **kwargs}`` (``feedback_lm.values``).
        use_feedback: put ``f(y)`` into the corrector input.
        sep_hypothesis / sep_feedback / sep_correction: the separators of docs/algorithms.md §6.1.
        layout: ``prompt_first`` (docs/algorithms.md §6.1) or ``prompt_last`` (see :func:`corrector_prompt`).
        num_samples: N, generator samples per prompt at initialization.
        sample_temperature: decoding q for initialization and exploration (inference is greedy).
        alpha / beta: improvement and proximity weights of Eq. 4.
        keep_pairs: [PROJECT] also train on ``(y, y)`` for hypotheses with the maximal value (see
            :func:`improving_pairs`); off by default (Eq. 3 is strictly improving).
        batch_size: pairs per minibatch; updates_per_step: minibatches (M) per iteration.
        pool_capacity: most pool entries kept (FIFO eviction).
        lr / weight_decay / warmup_steps / schedule / min_lr_ratio / max_grad_norm: the corrector's optimizer.
        max_new_tokens: generation budget (generator and corrector).
        num_corrections: k at inference.
        eval_generator_path / eval_generator_sft_steps: a second generator whose outputs the corrector
            is also applied to at validation (swapping generators); a path, or an in-plugin SFT run of
            that many steps (same settings as the first).
        max_iterations: stop training after this many iterations of Algorithm 1 (None: ``trainer.max_steps``
            decides; one Lightning step is one iteration, its ``updates_per_step`` updates included).
        num_samples_shown: validation samples printed.
    """

    DATA_KIND: ClassVar[str] = "tasks"

    def __init__(self, policy: ModelConfig | Mapping[str, Any], generator: ModelConfig | Mapping[str, Any] | None = None,
                 generator_path: str | None = None, generator_sft_steps: int = 0, generator_sft_lr: float = 1e-3,
                 generator_sft_batch_size: int = 32, corrector_init: str = "generator",
                 value: Mapping[str, Any] | None = None, use_feedback: bool = True,
                 sep_hypothesis: str = "\nHypothesis:", sep_feedback: str = "\nFeedback:",
                 sep_correction: str = "\nCorrection:", layout: str = "prompt_first", num_samples: int = 4,
                 sample_temperature: float = 1.0,
                 alpha: float = 1.0, beta: float = 1.0, keep_pairs: bool = False, batch_size: int = 32,
                 updates_per_step: int = 1,
                 pool_capacity: int = 50000, lr: float = 1e-3, weight_decay: float = 0.0, warmup_steps: int = 0,
                 schedule: str = "constant", min_lr_ratio: float = 0.1, max_grad_norm: float | None = 1.0,
                 max_new_tokens: int = 32, num_corrections: int = 3, eval_generator_path: str | None = None,
                 eval_generator_sft_steps: int = 0, max_iterations: int | None = None, num_samples_shown: int = 5):
        super().__init__()
        check_args("algo", generator_sft_steps=(generator_sft_steps, ">= 0"), generator_sft_lr=(generator_sft_lr, "> 0"),
                   generator_sft_batch_size=(generator_sft_batch_size, ">= 1"), num_samples=(num_samples, ">= 1"),
                   sample_temperature=(sample_temperature, "> 0"), alpha=(alpha, ">= 0"), beta=(beta, ">= 0"),
                   batch_size=(batch_size, ">= 1"), updates_per_step=(updates_per_step, ">= 1"),
                   pool_capacity=(pool_capacity, ">= 1"), lr=(lr, "> 0"), weight_decay=(weight_decay, ">= 0"),
                   warmup_steps=(warmup_steps, ">= 0"), schedule=(schedule, SCHEDULES),
                   min_lr_ratio=(min_lr_ratio, "[0, 1]"), max_grad_norm=(max_grad_norm, "> 0"),
                   max_new_tokens=(max_new_tokens, ">= 1"), num_corrections=(num_corrections, ">= 1"),
                   eval_generator_sft_steps=(eval_generator_sft_steps, ">= 0"),
                   max_iterations=(max_iterations, ">= 1"), num_samples_shown=(num_samples_shown, ">= 0"))
        if corrector_init not in CORRECTOR_INITS:
            raise UserError(f"unknown algo.corrector_init '{corrector_init}'; choose one of {list(CORRECTOR_INITS)}")
        for name, x in (("num_samples", num_samples), ("batch_size", batch_size),
                        ("updates_per_step", updates_per_step), ("num_corrections", num_corrections)):
            if x < 1:
                raise UserError(f"algo.{name} must be >= 1, got {x}")
        self.model_config = ModelConfig.coerce(policy)
        self.generator_config = _generator_config(generator or policy, generator_path)
        self.eval_generator_config = (_generator_config(generator or policy, eval_generator_path)
                                      if eval_generator_path or eval_generator_sft_steps > 0 else None)
        self.value_fn: ValueFn = build_value_fn(value or {"name": "task", "task": "word_sorting"})
        self.save_hyperparameters()
        corrector_prompt("", "", None, layout=layout)  # a bad layout fails here, not after the generator's SFT
        self.hparams.policy = self.model_config.to_dict()
        self.hparams.generator = self.generator_config.to_dict()
        self.automatic_optimization = False
        # Set once the generator exists (SFT done, corrector initialised); saved, so a resumed run skips it.
        self.register_buffer("generator_ready", torch.tensor(False))
        self.register_buffer("iterations", torch.tensor(0))
        self.pool = RolloutBuffer(capacity=pool_capacity, seed=0,
                                  dedupe_key=lambda row: (row["prompt"], row["response"]))
        self._rng = random.Random(0)
        self._pair_gen = torch.Generator().manual_seed(0)
        self._val_values: dict[str, list[torch.Tensor]] = {}
        self._samples: list[dict[str, Any]] = []

    def configure_model(self) -> None:
        if hasattr(self, "corrector"):
            return
        self.corrector = Policy.from_config(self.model_config)
        self.generator = _build_generator(self.generator_config, self.hparams.generator_path)
        if self.eval_generator_config is not None:
            self.eval_generator = _build_generator(self.eval_generator_config, self.hparams.eval_generator_path,
                                                   "algo.eval_generator_path")
        self.pool.pad_token_id = self.corrector.pad_token_id

    # ------------------------------------------------------------------------- generator preparation
    def on_train_start(self) -> None:
        self._prepare()

    def on_validation_start(self) -> None:
        self._prepare()

    def _prepare(self) -> None:
        """Make the generator(s) (in-plugin SFT when asked) and initialise the corrector, once."""
        if bool(self.generator_ready):
            return
        hp = self.hparams
        if hp.generator_sft_steps > 0:
            self._sft(self.generator, hp.generator_sft_steps, seed=0)
        if self.eval_generator_config is not None and hp.eval_generator_sft_steps > 0:
            self._sft(self.eval_generator, hp.eval_generator_sft_steps, seed=1)
        if hp.corrector_init == "generator":
            try:
                self.corrector.load_state_dict(self.generator.state_dict())
            except RuntimeError as e:
                raise UserError("algo.corrector_init=generator needs the corrector (model=...) and the generator "
                                "to have the same architecture; use algo.corrector_init=scratch "
                                f"({str(e).splitlines()[0]})") from None
        self.generator_ready.fill_(True)

    def _sft(self, policy: Policy, steps: int, seed: int) -> None:
        rows = getattr(self.trainer.datamodule, "train_rows", None)
        if not rows:
            raise UserError("algo.generator_sft_steps > 0 needs demonstrations: a data= with prompt/response "
                            "rows (a generated task, bbh or jsonl); or set algo.generator_path=<model dir>")
        hp = self.hparams
        with torch.enable_grad(), torch.inference_mode(False):
            sft_generator(policy, [r["prompt"] for r in rows], [r["response"] for r in rows], steps,
                          hp.generator_sft_batch_size, hp.generator_sft_lr, seed)

    # ------------------------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, list[str]], batch_idx: int) -> None:
        hp = self.hparams
        self.iterations += 1
        if hp.max_iterations and int(self.iterations) >= hp.max_iterations:
            self.trainer.should_stop = True  # this iteration is the last one
        prompts, targets = _unique_prompts(batch["prompt"], batch["target"])
        # 1. collect. Initialization (Eq. 2): N generator samples for prompts new to the pool.
        known = {row["prompt"] for row in self.pool.rows}
        new = [i for i, p in enumerate(prompts) if p not in known]
        entries: list[dict[str, Any]] = []
        if new:
            reps = [prompts[i] for i in new for _ in range(hp.num_samples)]
            rep_targets = [targets[i] for i in new for _ in range(hp.num_samples)]
            outs = self.generator.generate_text(reps, max_new_tokens=hp.max_new_tokens, do_sample=True,
                                                temperature=hp.sample_temperature)
            # 2. score
            values, feedback = judge(self.value_fn, reps, outs, rep_targets)
            entries += [{"prompt": p, "response": o, "target": t, "value": v, "feedback": f}
                        for p, o, t, v, f in zip(reps, outs, rep_targets, values.tolist(), feedback)]
            self.log("rollout/generator_value", values.mean(), batch_size=len(reps))
            # 3. buffer (the exploration below draws hypotheses from it)
            self.pool.add(self._to_rollout(entries))
        # 1./2. Exploration (Eq. 5): one correction per prompt, from a hypothesis drawn from its pool.
        groups = self._pool_groups()
        explored = explore(groups, prompts, self._sample_corrections,
                           lambda p, o, t: judge(self.value_fn, p, o, t), self._rng)
        gain = torch.tensor([e["value"] - e["hypothesis_value"] for e in explored])
        self.log("rollout/explore_value", torch.tensor([e["value"] for e in explored]).mean(), batch_size=len(explored))
        self.log("rollout/explore_gain", gain.mean(), batch_size=len(explored))
        # 3. buffer
        self.pool.add(self._to_rollout(explored))
        # 4. update: Pairing (Eq. 3), then M minibatches from the two-stage sampler (Eq. 4).
        rows = self.pool.rows
        pairs = improving_pairs([r["prompt"] for r in rows], [float(r["scores"]) for r in rows],
                                keep_value=self.value_fn.max_value if hp.keep_pairs else None)
        self.log("self_correct/pool_size", float(len(rows)))
        self.log("self_correct/iteration", self.iterations.float())
        self.log("self_correct/pairs", float(len(pairs)))
        if hp.keep_pairs:
            self.log("self_correct/keep_pairs", float(sum(i == j for i, j in pairs)))
        opt, sched = self.optimizers(), self.lr_schedulers()
        if self.trainer.world_size > 1:  # every rank must take the same number of backward passes (DDP)
            everyone = self.trainer.strategy.reduce(torch.tensor(float(bool(pairs)), device=self.device),
                                                    reduce_op=torch.distributed.ReduceOp.MIN)
            pairs = pairs if float(everyone) > 0 else []
        if not pairs:  # every pool so far is a tie: nothing to learn from yet; the iteration still counts
            opt.zero_grad(set_to_none=True)
            opt.step()  # no gradients: AdamW skips every parameter; advances global_step
            return
        hyp = torch.tensor([i for i, _ in pairs])
        self.log("self_correct/hypotheses", float(len(set(hyp.tolist()))))
        improvement = torch.tensor([float(rows[j]["scores"]) - float(rows[i]["scores"]) for i, j in pairs])
        similarity = self._similarities(rows, pairs)
        losses = []
        for update in range(hp.updates_per_step):
            picked = sample_pairs(hyp, improvement, similarity, hp.alpha, hp.beta, hp.batch_size, self._pair_gen)
            chosen = [pairs[i] for i in picked.tolist()]
            inputs = [self._input(rows[i]["prompt"], rows[i]["response"], rows[i]["feedback"]) for i, _ in chosen]
            enc = self.corrector.encode_batch(inputs, [rows[j]["response"] for _, j in chosen], self.device)
            loss = corrector_loss(self.corrector(**enc).logits, enc["response_ids"], enc["response_mask"])
            opt.zero_grad()
            self.manual_backward(loss)
            if hp.max_grad_norm:
                self.clip_gradients(opt, gradient_clip_val=hp.max_grad_norm, gradient_clip_algorithm="norm")
            optimizer_step(self, opt, last=update == hp.updates_per_step - 1)  # one step = one iteration
            sched.step()
            losses.append(loss.detach())
        self.log("train/loss", torch.stack(losses).mean(), prog_bar=True, batch_size=hp.batch_size)
        self.log("train/pair_gain", improvement[picked].mean(), batch_size=hp.batch_size)

    def _input(self, prompt: str, hypothesis: str, feedback: str) -> str:
        hp = self.hparams
        return corrector_prompt(prompt, hypothesis, feedback if hp.use_feedback else None,
                                hp.sep_hypothesis, hp.sep_feedback, hp.sep_correction, hp.layout)

    def _sample_corrections(self, prompts: list[str], hyps: list[str], feedback: list[str]) -> list[str]:
        return self.corrector.generate_text([self._input(p, h, f) for p, h, f in zip(prompts, hyps, feedback)],
                                            max_new_tokens=self.hparams.max_new_tokens, do_sample=True,
                                            temperature=self.hparams.sample_temperature)

    def _pool_groups(self) -> dict[str, list[dict[str, Any]]]:
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in self.pool.rows:
            groups.setdefault(row["prompt"], []).append(
                {"response": row["response"], "feedback": row["feedback"], "target": row["target"],
                 "value": float(row["scores"])})
        return groups

    def _similarities(self, rows: Sequence[Mapping[str, Any]], pairs: list[tuple[int, int]]) -> torch.Tensor:
        """``s(y, y')`` on the corrector's tokens, cached by (y, y') text: pools only grow by a few
        entries per step, so almost every pair was seen before."""
        cache = self.__dict__.setdefault("_sim_cache", {})
        if len(cache) > 2_000_000:
            cache.clear()
        out = []
        for i, j in pairs:
            key = (rows[i]["response"], rows[j]["response"])
            if key not in cache:
                cache[key] = token_similarity(rows[i]["response_ids"].tolist(), rows[j]["response_ids"].tolist())
            out.append(cache[key])
        return torch.tensor(out)

    def _to_rollout(self, entries: Sequence[Mapping[str, Any]]) -> Rollout:
        """Pool entries as a Rollout (corrector tokens; responses without EOS, for the similarity)."""
        tok = self.corrector
        p_ids, p_mask = tok.encode_prompts([e["prompt"] for e in entries])
        r_ids, r_mask = tok.encode_responses([e["response"] for e in entries], add_eos=False)
        if r_mask.shape[1] == 0 or not r_mask.any(1).all():  # empty outputs: keep one pad so rows stay valid
            r_ids, r_mask = pad_sequences([r[m].tolist() or [tok.pad_token_id] for r, m in zip(r_ids, r_mask)],
                                          tok.pad_token_id, side="right")
        return Rollout(p_ids, p_mask, r_ids, r_mask, scores=torch.tensor([float(e["value"]) for e in entries]),
                       prompt=[e["prompt"] for e in entries], response=[e["response"] for e in entries],
                       feedback=[e["feedback"] for e in entries], target=[e["target"] for e in entries])

    # ----------------------------------------------------------------------------------- validation
    def validation_step(self, batch: dict[str, list[str]], batch_idx: int) -> None:
        self._evaluate("", self.generator, batch, batch_idx)
        if self.eval_generator_config is not None:
            self._evaluate("swap_", self.eval_generator, batch, batch_idx)

    @torch.no_grad()
    def _evaluate(self, tag: str, generator: Policy, batch: dict[str, list[str]], batch_idx: int) -> None:
        hp = self.hparams
        prompts, targets = batch["prompt"], batch["target"]
        y0 = generator.generate_text(prompts, max_new_tokens=hp.max_new_tokens, do_sample=False)
        v0, f0 = judge(self.value_fn, prompts, y0, targets)

        def correct(idx, outs, fbs):
            return self.corrector.generate_text([self._input(prompts[i], o, f) for i, o, f in zip(idx, outs, fbs)],
                                                max_new_tokens=hp.max_new_tokens, do_sample=False)

        def judge_idx(idx, outs):
            return judge(self.value_fn, [prompts[i] for i in idx], outs, [targets[i] for i in idx])

        values, history = correct_iteratively(y0, v0, f0, correct, judge_idx, hp.num_corrections)
        top = self.value_fn.max_value
        oracle = oracle_stop(values, top)
        n = len(prompts)
        for name, x in correction_metrics(values, top).items():
            self.log(f"self_correct/{tag}{name}", x, batch_size=n, sync_dist=True)
        for t, x in enumerate(oracle.mean(1).tolist()):
            self.log(f"self_correct/{tag}oracle_value@{t}", x, batch_size=n, sync_dist=True)
        val = "val/" if not tag else "self_correct/swap_"
        self.log(f"{val}value", values[-1].mean(), batch_size=n, sync_dist=True, prog_bar=not tag)
        self.log(f"{val}accuracy", (values[-1] >= top).float().mean(), batch_size=n, sync_dist=True)
        self.log(f"{val}generator_value", values[0].mean(), batch_size=n, sync_dist=True)
        self.log(f"{val}generator_accuracy", (values[0] >= top).float().mean(), batch_size=n, sync_dist=True)
        self._val_values.setdefault(tag + "fixed_k", []).append(values.cpu())
        self._val_values.setdefault(tag + "oracle_stop", []).append(oracle.cpu())
        if batch_idx == 0 and not tag:
            m = hp.num_samples_shown
            self._samples = [{"prompt": prompts[i], "y0": history[0][i], f"y{hp.num_corrections}": history[-1][i],
                              "target": targets[i], "v0": round(float(values[0, i]), 3),
                              f"v{hp.num_corrections}": round(float(values[-1, i]), 3)} for i in range(min(m, n))]

    def on_validation_epoch_end(self) -> None:
        curves = {tag: torch.cat(v, dim=1).mean(1).tolist() for tag, v in self._val_values.items()}
        self._val_values = {}
        if self.trainer.sanity_checking or not self.trainer.is_global_zero or not curves:
            return
        print_samples(self._samples, title=f"self-correction on held-out prompts (step {self.global_step})")
        save_curve_plot(curves, Path(self.trainer.default_root_dir), self.global_step)

    # ------------------------------------------------------------------------------- optimizer, state
    def configure_optimizers(self):
        hp = self.hparams
        opt = build_adamw(self.corrector.parameters(), hp.lr, hp.weight_decay)
        iterations = hp.max_iterations or (self.trainer.max_steps if self.trainer.max_steps > 0 else 1000)
        total = max(1, int(iterations) * hp.updates_per_step)  # the schedule steps once per update
        sched = build_scheduler(opt, total, hp.schedule, hp.warmup_steps, hp.min_lr_ratio)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["self_correct_pool"] = self.pool.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "self_correct_pool" in checkpoint:
            self.pool.load_state_dict(checkpoint["self_correct_pool"])

    def save_pretrained(self, directory: str) -> None:
        """The corrector in Hugging Face format (``model.name_or_path=<dir>`` loads it)."""
        self.corrector.model.save_pretrained(directory)
        self.corrector.tokenizer.save_pretrained(directory)


# ------------------------------------------------------------------------------------------ helpers
def save_curve_plot(curves: Mapping[str, Sequence[float]], run_dir: Path, step: int) -> Path:
    """Value vs number of corrections (fixed k and oracle stop, per generator) as
    ``self_correct_curve.png``, plus the numbers in ``self_correct_curve.json``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for tag, ys in sorted(curves.items()):
        label = tag.replace("swap_", "swapped generator, ").replace("_", " ")
        ax.plot(range(len(ys)), ys, marker="o", linestyle="--" if "oracle" in tag else "-", label=label)
    ax.set_xlabel("number of corrections")
    ax.set_ylabel("mean value")
    ax.set_title(f"self-correction, step {step}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = run_dir / "self_correct_curve.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    (run_dir / "self_correct_curve.json").write_text(json.dumps({"step": step, "curves": dict(curves)}, indent=1))
    return out


def _unique_prompts(prompts: Sequence[str], targets: Sequence[str]) -> tuple[list[str], list[str]]:
    seen: dict[str, str] = {}
    for p, t in zip(prompts, targets):
        seen.setdefault(p, t)
    return list(seen), list(seen.values())


def _generator_config(base: ModelConfig | Mapping[str, Any], path: str | None) -> ModelConfig:
    cfg = ModelConfig.coerce(dict(base.to_dict() if isinstance(base, ModelConfig) else base))
    if path and not path.endswith(".ckpt"):
        cfg.name_or_path, cfg.preset, cfg.tokenizer, cfg.lora = path, None, None, type(cfg.lora)()
    return cfg


def _build_generator(cfg: ModelConfig, path: str | None, option: str = "algo.generator_path") -> Policy:
    """The fixed generator: built from ``cfg``; an SFT ``.ckpt`` of ours loads its ``policy.*`` weights."""
    gen = Policy.from_config(cfg)
    if path and path.endswith(".ckpt"):
        state = load_state_dict_safely(path, option)
        weights = {k[len("policy."):]: v for k, v in state.items() if k.startswith("policy.")}
        if not weights:
            raise UserError(f"{path} holds no policy weights (expected an SFT checkpoint of ours)")
        try:
            gen.load_state_dict(weights)
        except RuntimeError as e:
            raise UserError(f"{path} does not fit the generator config: {str(e).splitlines()[0]}") from None
    gen.requires_grad_(False)
    return gen.eval()
