"""Hindsight Instruction Relabeling (HIR; Zhang et al. 2023, arXiv 2302.05206), docs/algorithms.md §5.

Instruction following as goal-conditioned learning: sample answers from the current model under the
original instruction ("Solve the question with correct answer."), then relabel each answer with an
instruction it *does* satisfy (a wrong answer becomes the answer to "...with wrong answer.") and train
offline on the relabeled data with a label-smoothed supervised loss, a contrastive loss between the
relabeled and the opposite instruction, and an entropy bonus. No reward model, value net or RL loss.
Mechanics follow the official code (tianjunz/HIR), docs/algorithms.md §5.2-§5.6.

Loop (docs/algorithms.md §5.6): evaluate the base model; then per iteration: sample the training pool (into the shared
rollout buffer: the dataset D *accumulates* across iterations), split D 90/10, cap the train part at
``4 x |pool|``, train ``epochs_per_iteration`` epochs on it, evaluate (greedy, normalised exact match)
on the held-out split. Manual optimisation; one Lightning step is ONE offline optimizer step (not one
iteration): the iteration boundary (evaluate -> sample -> plan the epochs) happens inside the step
that needs it. That keeps ``trainer.global_step`` = optimizer steps, so ``trainer.max_steps``,
checkpoints (a checkpoint mid-iteration stores the buffer, the remaining minibatch plan and the RNG
state, and resumes exactly there), ``check_plugin`` and the progress bar all mean what they say.

``warm_start_steps`` [PROJECT]: a tiny model built from scratch never samples a correct answer and
does not read instructions, so it cannot learn from hindsight alone; the paper starts from FLAN-T5,
which is instruction-tuned. The tiny presets therefore first take that many supervised steps on the
datamodule's batches (gold answers under the original instruction and, with ``warm_start_wrong``,
corrupted answers under the wrong-answer instruction) to stand in for the instruction-tuned base
model. It is 0 for real models. ``hir/accuracy`` at iteration 0 (``hir/accuracy_base``) is the accuracy
of that base model, the number HIR's gain is measured against.

Run: ``python train.py algo=hir`` (tiny-t5, generated word_sorting, CPU);
``python train.py algo=hir model=flan-t5-large data=bbh data.task=date_understanding trainer=gpu``
(the paper's setting, docs/algorithms.md §5.7).

Logs: ``train/loss``, ``hir/sup_loss``, ``hir/contrastive_loss``, ``hir/entropy`` (per step);
``hir/accuracy`` (held-out greedy exact match, per iteration), ``hir/accuracy_base``,
``hir/correct_share`` (share of correct samples in the round), ``hir/pool_size`` (|D|),
``hir/train_size`` (capped train split), ``hir/val_nll`` (relabeled NLL on the 10% split of D),
``hir/iteration``; ``warm_start/loss``; ``val/accuracy`` (Lightning validation, same prompts).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F

from feedback_lm import ops
from feedback_lm.checks import check_args
from feedback_lm.data.datamodule import corrupt_answer
from feedback_lm.data.tasks import Example, is_correct, normalize_output, normalize_target
from feedback_lm.display import log_samples, print_samples
from feedback_lm.errors import UserError
from feedback_lm.evaluation import greedy_eval
from feedback_lm.models import ModelConfig
from feedback_lm.optim import build_adamw
from feedback_lm.policy import Policy, pad_sequences
from feedback_lm.rollout import Rollout, RolloutBuffer

# Spec §5.1/§5.2 [HIR-code:CoT.txt, verifier.py]. The "correct" relabel lacks "the" in the code.
INSTR_ORIGINAL = "Solve the question with correct answer."
INSTR_CORRECT = "Solve question with correct answer."
INSTR_WRONG = "Solve the question with wrong answer."
CONTRASTIVE_MODES = ("pair", "batch")
DEDUPE_MODES = ("round", "global")

Relabel = Callable[[str, str, str, Any], tuple[str, str]]


# ------------------------------------------------------------------------------ prompts and relabels
def make_input(instruction: str, query: str) -> str:
    """The model input, one template everywhere (docs/algorithms.md §5.1 [PROJECT]): ``"{instruction}\\n\\n{query}"``
    with ``query = "Q: ...\\nA:"`` (the datamodule's prompt)."""
    return f"{instruction}\n\n{query}"


def split_input(text: str) -> tuple[str, str]:
    """``text`` -> (instruction, query): split at the first ``"\\n\\n"``."""
    i = text.find("\n\n")
    if i < 0:
        raise ValueError(f"HIR input has no instruction line (no blank line after it): {text[:80]!r}")
    return text[:i], text[i + 2:]


def relabeled_input(text: str, instruction: str) -> str:
    """Swap the instruction line of ``text`` (docs/algorithms.md §5.2): ``instruction + text[first "\\n\\n":]``,
    leading spaces stripped."""
    i = text.find("\n\n")
    if i < 0:
        raise ValueError(f"HIR input has no instruction line (no blank line after it): {text[:80]!r}")
    return (instruction + text[i:]).lstrip(" ")


def feedback_correct(feedback: Any) -> bool:
    """Binary feedback: a bool, or a mapping with a ``"correct"`` entry."""
    if isinstance(feedback, Mapping):
        if "correct" not in feedback:
            raise ValueError(f"HIR feedback mapping has no 'correct' entry: {feedback!r}")
        return bool(feedback["correct"])
    if isinstance(feedback, (bool, int, float)) or (torch.is_tensor(feedback) and feedback.numel() == 1):
        return bool(feedback)
    raise ValueError(f"the default HIR relabel needs binary feedback (bool or {{'correct': bool}}), got {feedback!r}")


def relabel(query: str, output: str, instruction: str, feedback: Any, *, instr_correct: str = INSTR_CORRECT,
            instr_wrong: str = INSTR_WRONG, instr_original: str = INSTR_ORIGINAL,
            fix_instruction_typo: bool = False) -> tuple[str, str]:
    """The hindsight relabeling rule of the code (docs/algorithms.md §5.2): ``-> (p_pos, p_neg)``.

    ==========  =====================================  ======================================
    outcome     p_pos (SFT target, contrastive +)      p_neg
    ==========  =====================================  ======================================
    correct     ``instr_correct`` (code: no "the")     ``instr_wrong``
    wrong       ``instr_wrong``                        ``instr_original`` (the eval instruction)
    ==========  =====================================  ======================================

    ``fix_instruction_typo`` uses ``instr_original`` for correct outputs. ``query``, ``output`` and
    ``instruction`` are unused by this rule; they are part of the interface so that a relabeler for
    non-binary feedback (the paper's ``p* = phi(p, q, o, feedback)``) can plug in with the same signature.
    """
    if feedback_correct(feedback):
        return (instr_original if fix_instruction_typo else instr_correct), instr_wrong
    return instr_wrong, instr_original


# ------------------------------------------------------------------------------------- sub-outputs
def sample_sub_output(length: int, generator: torch.Generator | None = None) -> tuple[int, int]:
    """The code's DynamicLengthSampler (docs/algorithms.md §5.4): the chunk ``o[start:end]`` to train on.

    ``length <= 3``: ``(0, length)``. Otherwise ``start ~ U{0, 2, 4, ... < length-3}`` and
    ``end ~ U{start+1, start+3, ... <= length}``.
    """
    if length <= 3:
        return 0, length
    starts = range(0, length - 3, 2)
    start = starts[int(torch.randint(len(starts), (1,), generator=generator))]
    ends = range(start + 1, length + 1, 2)
    return start, ends[int(torch.randint(len(ends), (1,), generator=generator))]


def sub_output_labels(output_ids: Sequence[int], start: int, end: int, target: str, correct: bool,
                      decode: Callable[[list[int]], str], eos_token_id: int,
                      truncated_eos: bool = True) -> tuple[list[int], list[int], bool]:
    """Spec §5.4: the prefix to condition on, the labels, and whether to swap p_pos / p_neg.

    A *wrong* output whose truncated prefix ``o[:end]`` normalises to the target (or to a substring of
    it) is, up to ``end``, the right answer: its instructions are swapped. Labels are ``o[start:end]``
    re-terminated with EOS (the code re-tokenises the decoded chunk, which appends EOS), except in the
    substring branch, which the code does not re-tokenise. ``truncated_eos=False`` [PROJECT] ends a
    truncated chunk (``end < L``) without EOS: the output goes on there, so the model should not learn to
    stop. With byte tokenizers the code's EOS teaches answers cut mid-word (``" (A" + EOS``); with
    sentencepiece a cut mostly falls between whole answer tokens.

    Args:
        output_ids: ``[L]`` the sampled output (cut after the first EOS).
        start, end: the chunk, from :func:`sample_sub_output` (``(0, L)`` = the whole output).
        target: the gold answer. correct: whether the whole output was correct.
        decode: token ids -> text (special tokens dropped).
        truncated_eos: append EOS to truncated chunks (the code) or not.

    Returns:
        ``(prefix_ids o[:start], label_ids, swap)``.
    """
    o = list(output_ids)
    truncated = end < len(o)
    swap, add_eos = False, truncated_eos or not truncated
    if truncated and not correct:
        prefix, gold = normalize_output(decode(o[:end])), normalize_target(target)
        if prefix == gold:
            swap = True
        elif prefix in gold:
            swap, add_eos = True, False
    body = o[start:end]
    if body and body[-1] == eos_token_id:
        body = body[:-1]
    return o[:start], body + [eos_token_id] if add_eos else body, swap


def insert_prefix(prompt_ids: Sequence[int], prefix: Sequence[int], suffix_len: int, max_length: int) -> list[int]:
    """Spec §5.4 ``input[:-1] + o[:start] + input[-1:]``: the output prefix goes before the last
    ``suffix_len`` prompt tokens (T5: the encoder EOS, 1; causal prompts: none, 0), keeping the last
    ``max_length`` tokens."""
    cut = len(prompt_ids) - suffix_len
    return (list(prompt_ids[:cut]) + list(prefix) + list(prompt_ids[cut:]))[-max_length:]


def dedupe_key(mode: str) -> Callable[[dict[str, Any]], tuple]:
    """The buffer's dedupe key: ``round`` keeps unique outputs per query per sampling round (the code:
    D still accumulates repeats across rounds), ``global`` never stores a (query, output) pair twice."""
    if mode == "global":
        return lambda row: (row["prompt"], row["response"])
    if mode == "round":
        return lambda row: (row["feedback"]["round"], row["prompt"], row["response"])
    raise UserError(f"unknown algo.dedupe '{mode}'; choose one of {list(DEDUPE_MODES)}")


# -------------------------------------------------------------------------------------------- losses
def label_smoothing_terms(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example NLL and smoothing terms of HF ``LabelSmoother`` (docs/algorithms.md §5.3 a), fp32.

    Args:
        logits: ``[B,T,V]`` aligned with ``labels``. labels: ``[B,T]``. mask: ``[B,T]`` bool.

    Returns:
        ``(nll [B], smooth [B])``: ``mean_t -log p(o_t)`` and ``mean_t (1/V) sum_v -log p_t(v)``.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    nll = -logp.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)
    smooth = -logp.mean(dim=-1)
    return ops.masked_mean(nll, mask, dim=-1), ops.masked_mean(smooth, mask, dim=-1)


def supervised_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, epsilon: float = 0.2) -> torch.Tensor:
    """Label-smoothed NLL on the relabeled instruction: ``(1-eps) nll + eps smooth``, per-example token
    means averaged over the batch (docs/algorithms.md §5.3 a; for B=1 exactly HF ``LabelSmoother(epsilon)``).

    Args: see :func:`label_smoothing_terms`. Returns: scalar.
    """
    nll, smooth = label_smoothing_terms(logits, labels, mask)
    return ((1 - epsilon) * nll + epsilon * smooth).mean()


def contrastive_terms(lp_pos: torch.Tensor, lp_neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(-log P/(P+N), -log N/(P+N))`` with ``P = exp(lp_pos)``, ``N = exp(lp_neg)``, both ``[B]``.

    Written as softplus: the code's ``-log(P/(P+N) + 1e-8)`` equals it up to the 1e-8 and cannot hit log 0.
    """
    lp_pos, lp_neg = lp_pos.float(), lp_neg.float()
    return F.softplus(lp_neg - lp_pos), F.softplus(lp_pos - lp_neg)


def contrastive_loss(lp_pos: torch.Tensor, lp_neg: torch.Tensor, eps: float = 0.2) -> torch.Tensor:
    """The code's 2-way contrastive loss, label-smoothed (docs/algorithms.md §5.3 b), averaged over the batch.

    Args:
        lp_pos: ``[B]`` length-normalised log-likelihood of the output under p_pos (``mean_t log p``).
        lp_neg: ``[B]`` the same under p_neg. Neither is detached: both passes get gradients.
        eps: label smoothing (the code uses the LabelSmoother's 0.2).

    Returns:
        Scalar ``mean_b [(1-eps) softplus(lp_neg-lp_pos) + eps softplus(lp_pos-lp_neg)]``.
    """
    pos, neg = contrastive_terms(lp_pos, lp_neg)
    return ((1 - eps) * pos + eps * neg).mean()


def batch_contrastive_loss(lp_matrix: torch.Tensor) -> torch.Tensor:
    """The paper's contrastive loss (Eq. 6 as read, docs/algorithms.md §5.5): softmax over the batch's instructions.

    Args:
        lp_matrix: ``[n,n]``, ``lp_matrix[i,j] = mean_t log P(o_i | q_i, p_j)`` where ``p_j`` is example
            j's relabeled instruction.

    Returns:
        Scalar ``-(1/n) sum_i log softmax_j(lp_matrix[i])[i]``.
    """
    n = lp_matrix.shape[0]
    return F.cross_entropy(lp_matrix.float(), torch.arange(n, device=lp_matrix.device))


def mean_entropy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-example mean entropy over the label positions ``[B]`` (docs/algorithms.md §5.3 c; padding masked)."""
    return ops.masked_mean(ops.entropy_from_logits(logits), mask, dim=-1)


def hir_loss(sup: torch.Tensor, con: torch.Tensor, entropy: torch.Tensor, contrastive_coef: float = 1.0,
             entropy_coef: float = 0.001) -> torch.Tensor:
    """``L = L_sup + contrastive_coef * L_con - entropy_coef * H`` (docs/algorithms.md §5.3; entropy is a bonus)."""
    return sup + contrastive_coef * con - entropy_coef * entropy


def split_and_cap(n: int, pool_size: int, eval_size: int, generator: torch.Generator | None = None,
                  val_fraction: float = 0.1, cap_factor: int = 4) -> tuple[list[int], list[int]]:
    """Spec §5.6 ``train(D)``: shuffle D's ``n`` rows, split 90/10, cap train at ``cap_factor*pool_size``
    and val at ``cap_factor*eval_size`` rows. Returns (train indices, val indices)."""
    perm = torch.randperm(n, generator=generator).tolist()
    n_val = int(n * val_fraction)
    train, val = perm[: n - n_val], perm[n - n_val:]
    return train[: cap_factor * pool_size], val[: cap_factor * eval_size]


# -------------------------------------------------------------------------------------------- module
class HIR(L.LightningModule):
    """Hindsight Instruction Relabeling (see the module docstring; every default is docs/algorithms.md §5.7's code value).

    Args:
        policy: the model (``conf/model/*.yaml``).
        lr, weight_decay: AdamW, constant LR (docs/algorithms.md §5.7: 5e-4, 0).
        iterations: sampling + training rounds (code: 1 initial + 30).
        epochs_per_iteration: passes over the capped train split per round (code: 10).
        batch_size: relabeled examples per optimizer step (code: 64 effective).
        micro_batch_size: gradient-accumulation chunk (None = the whole batch).
        num_samples: samples per query per round (run.sh NUM_SAMPLE=1).
        temperature, max_new_tokens: sampling (1.0, 256); evaluation is greedy with the same budget.
        sample_batch_size: queries per generate call.
        pool_size: queries of the training pool (None = every training row: BBH's 80%).
        eval_size: held-out examples for ``hir/accuracy`` (None = the whole val split).
        buffer_capacity: rows kept in D (FIFO; None = unbounded, as the code).
        dedupe: ``round`` (unique outputs per query per round, the code) or ``global`` (never store a
            (query, output) pair twice).
        cap_factor, val_fraction: the train/val split of D (4x pool, 10%).
        label_smoothing: epsilon of the supervised loss (0.2).
        contrastive_eps: smoothing of the pair-contrastive loss (None = ``label_smoothing``, as the code).
        contrastive: ``pair`` (the code: softmax over {p_pos, p_neg}) or ``batch`` (the paper).
        contrastive_coef, entropy_coef: loss weights (1, 0.001).
        sub_output: sub-output relabeling (docs/algorithms.md §5.4, on in the code).
        sub_output_eos: end truncated chunks with EOS as the code does (see :func:`sub_output_labels`).
        instr_original, instr_correct, instr_wrong, fix_instruction_typo: the relabel strings (§5.2).
        relabel_fn: import path of a ``relabel(query, output, instruction, feedback) -> (p_pos, p_neg)``
            callable (or the callable itself) replacing the default rule.
        warm_start_steps, warm_start_lr: supervised steps on gold answers first [PROJECT], see above.
        warm_start_wrong: half of each warm-start batch is a corrupted answer under ``instr_wrong``, so the
            base model knows what the two instructions mean (as an instruction-tuned model would) [PROJECT].
        max_grad_norm: gradient clipping (None = off; the code does not say).
        num_samples_shown: held-out samples printed at each evaluation.
        seed: seed of the split / shuffle / sub-output generator.
    """

    DATA_KIND: ClassVar[str] = "tasks"

    def __init__(self, policy: ModelConfig | Mapping[str, Any], lr: float = 5e-4, weight_decay: float = 0.0,
                 iterations: int = 31, epochs_per_iteration: int = 10, batch_size: int = 64,
                 micro_batch_size: int | None = None, num_samples: int = 1, temperature: float = 1.0,
                 max_new_tokens: int = 256, sample_batch_size: int = 64, pool_size: int | None = None,
                 eval_size: int | None = None, buffer_capacity: int | None = None, dedupe: str = "round",
                 cap_factor: int = 4, val_fraction: float = 0.1, label_smoothing: float = 0.2,
                 contrastive_eps: float | None = None, contrastive: str = "pair", contrastive_coef: float = 1.0, entropy_coef: float = 0.001,
                 sub_output: bool = True, sub_output_eos: bool = True, instr_original: str = INSTR_ORIGINAL, instr_correct: str = INSTR_CORRECT,
                 instr_wrong: str = INSTR_WRONG, fix_instruction_typo: bool = False,
                 relabel_fn: str | Relabel | None = None, warm_start_steps: int = 0, warm_start_wrong: bool = False,
                 warm_start_lr: float | None = None, max_grad_norm: float | None = None,
                 num_samples_shown: int = 5, seed: int = 1):
        super().__init__()
        check_args("algo", lr=(lr, "> 0"), weight_decay=(weight_decay, ">= 0"), iterations=(iterations, ">= 1"),
                   epochs_per_iteration=(epochs_per_iteration, ">= 0"), batch_size=(batch_size, ">= 1"),
                   micro_batch_size=(micro_batch_size, ">= 1"), num_samples=(num_samples, ">= 1"),
                   temperature=(temperature, "> 0"), max_new_tokens=(max_new_tokens, ">= 1"),
                   sample_batch_size=(sample_batch_size, ">= 1"), pool_size=(pool_size, ">= 1"),
                   eval_size=(eval_size, ">= 1"), buffer_capacity=(buffer_capacity, ">= 1"), cap_factor=(cap_factor, ">= 1"),
                   val_fraction=(val_fraction, "[0, 1)"), label_smoothing=(label_smoothing, "[0, 1)"),
                   contrastive_eps=(contrastive_eps, "[0, 1)"), contrastive_coef=(contrastive_coef, ">= 0"),
                   entropy_coef=(entropy_coef, ">= 0"), warm_start_steps=(warm_start_steps, ">= 0"),
                   warm_start_lr=(warm_start_lr, "> 0"), max_grad_norm=(max_grad_norm, "> 0"),
                   num_samples_shown=(num_samples_shown, ">= 0"))
        if contrastive not in CONTRASTIVE_MODES:
            raise UserError(f"unknown algo.contrastive '{contrastive}'; choose one of {list(CONTRASTIVE_MODES)}")
        for name, text in (("instr_original", instr_original), ("instr_correct", instr_correct),
                           ("instr_wrong", instr_wrong)):
            if "\n\n" in text or not text.strip():
                raise UserError(f"algo.{name} must be one non-empty line without a blank line, got {text!r}")
        for name, value in (("iterations", iterations), ("epochs_per_iteration", epochs_per_iteration),
                            ("batch_size", batch_size), ("num_samples", num_samples),
                            ("max_new_tokens", max_new_tokens), ("sample_batch_size", sample_batch_size)):
            if value < 1:
                raise UserError(f"algo.{name} must be >= 1, got {value}")
        self.model_config = ModelConfig.coerce(policy)
        self._relabel = _resolve_relabel(relabel_fn, instr_correct, instr_wrong, instr_original,
                                         fix_instruction_typo)
        self.save_hyperparameters(ignore=["relabel_fn"])
        self.hparams.policy = self.model_config.to_dict()
        self.hparams.relabel_fn = relabel_fn if isinstance(relabel_fn, str) or relabel_fn is None else \
            f"{relabel_fn.__module__}.{getattr(relabel_fn, '__qualname__', type(relabel_fn).__name__)}"
        self.automatic_optimization = False
        self.buffer = RolloutBuffer(capacity=buffer_capacity, seed=seed, dedupe_key=dedupe_key(dedupe))
        self._gen = torch.Generator().manual_seed(seed)
        self._iteration = 0          # rounds whose training has started
        self._plan: list[list[int]] = []   # minibatches (buffer row indices) left in this round
        self._val_idx: list[int] = []
        self._samples: list[dict[str, Any]] = []

    def configure_model(self) -> None:
        if not hasattr(self, "policy"):
            self.policy = Policy.from_config(self.model_config)
            self.buffer.pad_token_id = self.policy.pad_token_id
            # tokens encode_prompts appends (T5: the encoder EOS); sub-output prefixes go before them
            self._prompt_suffix = self.policy.prompt_suffix_tokens

    # ----------------------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, list[str]], batch_idx: int) -> None:
        hp = self.hparams
        if self.global_step < hp.warm_start_steps:
            return self._warm_start_step(batch)
        if not self._plan:
            self._start_iteration()  # evaluate -> 1. collect -> 2. score -> 3. buffer -> plan the epochs
        # 4. update: one offline optimizer step on one minibatch of relabeled examples
        stored = self.buffer.rows
        rows = [stored[i] for i in self._plan.pop(0)]
        opt = self.optimizers()
        for group in opt.param_groups:  # constant LR (docs/algorithms.md §5.7), also after a warm start or a resume
            group["lr"] = hp.lr
        opt.zero_grad()
        chunk = hp.micro_batch_size or len(rows)
        totals = {"loss": 0.0, "sup": 0.0, "con": 0.0, "ent": 0.0}
        for i in range(0, len(rows), chunk):
            part = rows[i: i + chunk]
            terms = self._loss_terms(part, sub_output=hp.sub_output)
            self.manual_backward(terms["loss"] * len(part) / len(rows))
            for k in totals:
                totals[k] += float(terms[k].detach()) * len(part) / len(rows)
        if hp.max_grad_norm:
            self.clip_gradients(opt, gradient_clip_val=hp.max_grad_norm, gradient_clip_algorithm="norm")
        opt.step()
        self.log("train/loss", totals["loss"], prog_bar=True)
        self.log("hir/sup_loss", totals["sup"])
        self.log("hir/contrastive_loss", totals["con"])
        self.log("hir/entropy", totals["ent"])
        self.log("hir/iteration", float(self._iteration), prog_bar=True)
        if not self._plan:
            self._end_iteration()

    def _warm_start_step(self, batch: dict[str, list[str]]) -> None:
        """[PROJECT] supervised step on gold answers under the original instruction (see module docstring)."""
        hp = self.hparams
        instructions, responses = [hp.instr_original] * len(batch["prompt"]), list(batch["response"])
        if hp.warm_start_wrong:  # every other example: a corrupted answer under the wrong-answer instruction
            rng = random.Random(self.global_step)
            for i in range(1, len(responses), 2):
                wrong = corrupt_answer("", Example(batch["prompt"][i], batch["target"][i]), rng)
                instructions[i], responses[i] = hp.instr_wrong, " " + wrong
        prompts = [make_input(p, q) for p, q in zip(instructions, batch["prompt"])]
        enc = self.policy.encode_batch(prompts, responses, self.device)
        loss = supervised_loss(self.policy(**enc).logits, enc["response_ids"], enc["response_mask"], 0.0)
        opt = self.optimizers()
        lr = hp.warm_start_lr or hp.lr
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        self.manual_backward(loss)
        if hp.max_grad_norm:
            self.clip_gradients(opt, gradient_clip_val=hp.max_grad_norm, gradient_clip_algorithm="norm")
        opt.step()
        self.log("warm_start/loss", loss)
        self.log("train/loss", loss, prog_bar=True)  # same arguments as the HIR steps' (Lightning requires it)

    def _start_iteration(self) -> None:
        hp = self.hparams
        pool, held_out = self._pool(), self._held_out()
        if self._iteration == 0:  # docs/algorithms.md §5.6: evaluate(base model) first
            acc = self._evaluate(held_out)
            self.log("hir/accuracy_base", acc)
            self.log("hir/accuracy", acc, prog_bar=True)
            self._report(f"HIR base model: held-out accuracy {acc:.3f}", samples=True)
        # 1. collect: sample the pool under the original instruction (no grad, dropout off in generate)
        prompts, targets, outputs, ids, mask, resp, rmask = self._sample(pool)
        # 2. score: docs/algorithms.md §5.1 normalised exact match is the feedback
        correct = [is_correct(o, t) for o, t in zip(outputs, targets)]
        # 3. buffer: D accumulates across rounds (append mode, docs/algorithms.md §5.6); dedupe within a round
        rollout = Rollout(ids, mask, resp, rmask, scores=torch.tensor(correct, dtype=torch.float32),
                          prompt=prompts, response=outputs, instruction=[hp.instr_original] * len(prompts),
                          feedback=[{"correct": c, "round": self._iteration} for c in correct], target=targets)
        self.buffer.add(rollout)
        train_idx, self._val_idx = split_and_cap(len(self.buffer), len(pool), len(held_out), self._gen,
                                                 hp.val_fraction, hp.cap_factor)
        steps = -(-len(train_idx) // hp.batch_size)
        steps = int(self.trainer.strategy.reduce(torch.tensor(steps, device=self.device),
                                                 reduce_op=torch.distributed.ReduceOp.MIN)) \
            if self.trainer.world_size > 1 else steps  # every rank steps the same number of times
        plan = []
        for _ in range(hp.epochs_per_iteration):
            order = [train_idx[i] for i in torch.randperm(len(train_idx), generator=self._gen).tolist()]
            plan += [order[s: s + hp.batch_size] for s in range(0, len(order), hp.batch_size)][:steps]
        self._plan = plan
        share = sum(correct) / max(len(correct), 1)
        self.log("hir/correct_share", share, prog_bar=True, sync_dist=True)
        self.log("hir/pool_size", float(len(self.buffer)))
        self.log("hir/train_size", float(len(train_idx)))
        self._report(f"HIR iteration {self._iteration}: sampled {len(outputs)} outputs, {share:.1%} correct, "
                     f"|D| = {len(self.buffer)}, training on {len(train_idx)} x {hp.epochs_per_iteration} epochs "
                     f"({len(plan)} steps)")

    def _end_iteration(self) -> None:
        hp = self.hparams
        if self._val_idx:
            with torch.no_grad():
                stored = self.buffer.rows
                rows = [stored[i] for i in self._val_idx]
                nll = [self._loss_terms(rows[i: i + hp.batch_size], sub_output=False)["nll"]
                       for i in range(0, len(rows), hp.batch_size)]
            self.log("hir/val_nll", torch.cat(nll).mean(), sync_dist=True)
        acc = self._evaluate(self._held_out())
        self.log("hir/accuracy", acc, prog_bar=True)
        self._report(f"HIR iteration {self._iteration}: held-out accuracy {acc:.3f}", samples=True)
        self._iteration += 1
        if self._iteration >= hp.iterations:
            self.trainer.should_stop = True

    # ------------------------------------------------------------------------------- relabel + loss
    def _loss_terms(self, rows: Sequence[dict[str, Any]], sub_output: bool) -> dict[str, torch.Tensor]:
        """Relabel ``rows`` (buffer rows), run the forward passes and compute docs/algorithms.md §5.3's terms."""
        hp = self.hparams
        eos = self.policy.eos_token_id
        texts, prefixes, labels, pos, neg = [], [], [], [], []
        for row in rows:
            _, query = split_input(row["prompt"])
            p_pos, p_neg = self._relabel(query, row["response"], row["instruction"], row["feedback"])
            o = row["response_ids"].tolist()
            start, end = sample_sub_output(len(o), self._gen) if sub_output else (0, len(o))
            prefix, lab, swap = sub_output_labels(o, start, end, row["target"], feedback_correct(row["feedback"]),
                                                  self._decode, eos, hp.sub_output_eos)
            if swap:
                p_pos, p_neg = p_neg, p_pos
            texts.append(row["prompt"])
            prefixes.append(prefix)
            labels.append(lab)
            pos.append(p_pos)
            neg.append(p_neg)
        n = len(rows)
        label_ids, label_mask = (t.to(self.device) for t in pad_sequences(labels, self.policy.pad_token_id, "right"))
        if hp.contrastive == "pair":
            instructions = pos + neg      # one forward over [p_pos inputs; p_neg inputs]
            logits = self._forward(texts * 2, instructions, prefixes * 2, label_ids.repeat(2, 1),
                                   label_mask.repeat(2, 1))
            lp = ops.seq_logprob_mean(ops.gather_logprobs(logits, label_ids.repeat(2, 1)), label_mask.repeat(2, 1))
            pos_logits = logits[:n]
            lp_pos, lp_neg = lp[:n], lp[n:]
            eps_c = hp.label_smoothing if hp.contrastive_eps is None else hp.contrastive_eps
            con = contrastive_loss(lp_pos, lp_neg, eps_c)
        else:
            # ell_ij depends on j only through p_j: one pass per distinct instruction in the batch
            distinct = sorted(set(pos))
            col = torch.tensor([distinct.index(p) for p in pos], device=self.device)
            k = len(distinct)
            instructions = [u for u in distinct for _ in range(n)]
            logits = self._forward(texts * k, instructions, prefixes * k, label_ids.repeat(k, 1),
                                   label_mask.repeat(k, 1))
            lp = ops.seq_logprob_mean(ops.gather_logprobs(logits, label_ids.repeat(k, 1)),
                                      label_mask.repeat(k, 1)).view(k, n)   # [K, n]
            pos_logits = logits[col * n + torch.arange(n, device=self.device)]
            lp_pos, lp_neg = lp[col, torch.arange(n, device=self.device)], None
            con = batch_contrastive_loss(lp.t()[:, col])
        nll, smooth = label_smoothing_terms(pos_logits, label_ids, label_mask)
        eps = hp.label_smoothing
        sup = ((1 - eps) * nll + eps * smooth).mean()
        ent = mean_entropy(pos_logits, label_mask).mean()
        loss = hir_loss(sup, con, ent, hp.contrastive_coef, hp.entropy_coef)
        return {"loss": loss, "sup": sup, "con": con, "ent": ent, "nll": nll.detach(), "lp_pos": lp_pos,
                "lp_neg": lp_neg}

    def _forward(self, texts, instructions, prefixes, label_ids, label_mask) -> torch.Tensor:
        """Logits ``[N,R,V]`` of the labels given ``instruction + query`` with the sub-output prefix
        inserted before the tokens the policy appends to prompts (docs/algorithms.md §5.4: ``input[:-1] + o[:start] + input[-1:]``)."""
        ids, mask = self.policy.encode_prompts([relabeled_input(t, p) for t, p in zip(texts, instructions)])
        seqs = [insert_prefix([t for t, m in zip(row_ids, row_mask) if m], prefix, self._prompt_suffix,
                              self.policy.max_length)
                for row_ids, row_mask, prefix in zip(ids.tolist(), mask.tolist(), prefixes)]
        ids, mask = pad_sequences(seqs, self.policy.pad_token_id, "left")
        return self.policy(ids.to(self.device), mask.to(self.device), label_ids, label_mask).logits

    def _decode(self, ids: list[int]) -> str:
        return self.policy.tokenizer.decode(ids, skip_special_tokens=True)

    # ------------------------------------------------------------------------- sampling + evaluation
    @torch.no_grad()
    def _sample(self, pool: Sequence[dict[str, str]]):
        """``num_samples`` samples per query of ``pool`` -> texts and padded id tensors (CPU)."""
        hp = self.hparams
        prompts, targets, outputs, parts = [], [], [], []
        for i in range(0, len(pool), hp.sample_batch_size):
            chunk = pool[i: i + hp.sample_batch_size]
            texts = [make_input(hp.instr_original, r["prompt"]) for r in chunk]
            ids, mask = self.policy.encode_prompts(texts)
            gen = self.policy.generate(ids.to(self.device), mask.to(self.device), max_new_tokens=hp.max_new_tokens,
                                       do_sample=True, temperature=hp.temperature,
                                       num_return_sequences=hp.num_samples)
            k = hp.num_samples
            prompts += [t for t in texts for _ in range(k)]
            targets += [r["target"] for r in chunk for _ in range(k)]
            outputs += self.policy.decode(gen.response_ids, gen.response_mask)
            parts.append((ids.repeat_interleave(k, 0), mask.repeat_interleave(k, 0), gen.response_ids.cpu(),
                          gen.response_mask.cpu()))
        rows = [row for p in parts for row in Rollout(*p).rows()]
        merged = Rollout.collate(rows, self.policy.pad_token_id)
        return (prompts, targets, outputs, merged.prompt_ids, merged.prompt_mask, merged.response_ids,
                merged.response_mask)

    @torch.no_grad()
    def _evaluate(self, rows: Sequence[dict[str, str]]) -> float:
        """Greedy, normalised exact match (docs/algorithms.md §5.7 eval) under the original instruction."""
        hp = self.hparams
        correct, shown = [], []
        for i in range(0, len(rows), hp.sample_batch_size):
            chunk = rows[i: i + hp.sample_batch_size]
            prompts = [make_input(hp.instr_original, r["prompt"]) for r in chunk]
            outputs, ok = greedy_eval(self.policy, prompts, [r["target"] for r in chunk], hp.max_new_tokens,
                                      self.device)
            correct.append(ok)
            if not shown:
                shown = [{"prompt": r["prompt"], "output": o, "target": r["target"], "correct": bool(c)}
                         for r, o, c in zip(chunk, outputs, ok.tolist())][: hp.num_samples_shown]
        self._samples = shown
        acc = torch.cat(correct).mean().to(self.device) if correct else torch.zeros((), device=self.device)
        if self.trainer.world_size > 1:
            acc = self.trainer.strategy.reduce(acc, reduce_op="mean")
        return float(acc)

    def _rows(self, attr: str) -> list[dict[str, str]]:
        rows = getattr(self.trainer.datamodule, attr, None) if self.trainer.datamodule is not None else None
        if not rows or not all("target" in r for r in rows[:1]):
            raise UserError("algo=hir needs a task datamodule with prompts and targets (data=word_sorting, "
                            "data=bbh data.task=..., or data=jsonl with a 'target' field)")
        return rows

    def _pool(self) -> list[dict[str, str]]:
        """The sampling pool (docs/algorithms.md §5.1: BBH's 80% split), this rank's share of it."""
        rows = self._rows("train_rows")[: self.hparams.pool_size or None]
        return rows[self.global_rank:: self.trainer.world_size]

    def _held_out(self) -> list[dict[str, str]]:
        rows = self._rows("val_rows")[: self.hparams.eval_size or None]
        return rows[self.global_rank:: self.trainer.world_size]

    def _report(self, line: str, samples: bool = False) -> None:
        if not self.trainer.is_global_zero:
            return
        print(line, flush=True)
        if samples and self._samples:
            print_samples(self._samples, title=f"held-out samples (step {self.global_step})")
            log_samples(self.loggers, "hir/samples", self._samples, self.global_step)

    # ----------------------------------------------------------------------------------- validation
    def validation_step(self, batch: dict[str, list[str]], batch_idx: int) -> None:
        prompts = [make_input(self.hparams.instr_original, p) for p in batch["prompt"]]
        _, correct = greedy_eval(self.policy, prompts, batch["target"], self.hparams.max_new_tokens, self.device)
        self.log("val/accuracy", correct.mean().to(self.device), batch_size=len(prompts), sync_dist=True,
                 prog_bar=True)

    # ------------------------------------------------------------------------ optimizer + checkpoint
    def configure_optimizers(self):
        return build_adamw(self.parameters(), self.hparams.lr, self.hparams.weight_decay)  # constant LR (§5.7)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["hir"] = {"buffer": self.buffer.state_dict(), "iteration": self._iteration, "plan": self._plan,
                             "val_idx": self._val_idx, "generator": self._gen.get_state()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("hir")
        if state is None:
            return
        self.buffer.load_state_dict(state["buffer"])
        self._iteration, self._plan, self._val_idx = state["iteration"], state["plan"], state["val_idx"]
        self._gen.set_state(state["generator"])

    def save_pretrained(self, directory: str) -> None:
        """Write the trained model in Hugging Face format (loadable with ``model.name_or_path=``)."""
        self.policy.model.save_pretrained(directory)
        self.policy.tokenizer.save_pretrained(directory)


def _resolve_relabel(relabel_fn, instr_correct, instr_wrong, instr_original, fix_instruction_typo) -> Relabel:
    if relabel_fn is None:
        return functools.partial(relabel, instr_correct=instr_correct, instr_wrong=instr_wrong,
                                 instr_original=instr_original, fix_instruction_typo=fix_instruction_typo)
    if callable(relabel_fn):
        return relabel_fn
    from hydra.utils import get_method

    try:
        return get_method(relabel_fn)
    except Exception as e:  # noqa: BLE001 - hydra raises several kinds; one message for all
        raise UserError(f"algo.relabel_fn={relabel_fn!r} is not an importable callable "
                        f"relabel(query, output, instruction, feedback) -> (p_pos, p_neg): {e}") from None
