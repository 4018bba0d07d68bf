"""Evaluation metrics: task scores, ROUGE, diversity, copying, KL and perplexity to a baseline, win rates,
and bootstrap intervals. The plugins' validation, ``python -m feedback_lm.evaluate`` and the benches all
compute their numbers here, so each number means the same thing everywhere (docs/evaluation.md).

Text metrics work on whitespace words (``text.split()``), so runs with different tokenizers are compared on
the same units; KL and perplexity work on the models' own tokens and need a shared vocabulary.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Sequence

import numpy as np
import torch

from feedback_lm import ops
from feedback_lm.data.tasks import is_correct


def exact_match(outputs: Sequence[str], targets: Sequence[str],
                match: Callable[[str, str], bool] = is_correct) -> torch.Tensor:
    """Normalised exact match per sample (the task verifiers' normalisation), as a float tensor ``[B]`` of 0/1."""
    return torch.tensor([float(match(o, t)) for o, t in zip(outputs, targets)])


_OPTION = re.compile(r"\(([A-Za-z])\)")
_NUMBER = re.compile(r"-?\d+")
_WORD_NUMBERS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}


def extract_answer(output: str, target: str) -> str:
    """The answer a free-form output gives, in the target's form, for models that answer in sentences
    ("The correct answer is (C).", "There are 7 fruits."): for an option target ``(X)`` the first ``(X)``
    in the output; for an integer target the first integer (or number word up to twenty); otherwise the
    output as it is. Lenient by design: it reads the FIRST candidate, so an output that lists several is
    scored on the first."""
    t = target.strip()
    if _OPTION.fullmatch(t):
        m = _OPTION.search(output)
        return f"({m.group(1).upper()})" if m else output
    if _NUMBER.fullmatch(t):
        words = re.findall(r"-?\d+|[A-Za-z]+", output)
        for w in words:
            if _NUMBER.fullmatch(w):
                return w
            if w.lower() in _WORD_NUMBERS:
                return _WORD_NUMBERS[w.lower()]
        return output
    return output


def answer_match(outputs: Sequence[str], targets: Sequence[str]) -> torch.Tensor:
    """Exact match after :func:`extract_answer`: ``[B]`` of 0/1. Next to :func:`exact_match` it separates
    "knows the answer" from "answers in the expected format" (an instruct model as it comes)."""
    return exact_match([extract_answer(o, t) for o, t in zip(outputs, targets)], targets)


@torch.no_grad()
def greedy_eval(policy, prompts: Sequence[str], targets: Sequence[str], max_new_tokens: int,
                device: torch.device | None = None) -> tuple[list[str], torch.Tensor]:
    """Greedy-decode ``prompts`` and score them against ``targets``.

    Returns:
        (outputs, correct ``[B]`` float 0/1).
    """
    ids, mask = policy.encode_prompts(prompts)
    if device is not None:
        ids, mask = ids.to(device), mask.to(device)
    gen = policy.generate(ids, mask, max_new_tokens=max_new_tokens, do_sample=False)
    outputs = policy.decode(gen.response_ids, gen.response_mask)
    return outputs, exact_match(outputs, targets)


# ------------------------------------------------------------------------------------------- task scores
def task_scores(value_fn, prompts: Sequence[str], outputs: Sequence[str],
                targets: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Exact match and graded score per sample from a value function (:mod:`feedback_lm.values`).

    Exact match is ``value >= max_value`` (for ``TaskValue``: the verifier's normalised exact match; for
    ``FinalAnswerValue``: GSM8K's final number), the graded score ``value / max_value`` in ``[0, 1]``.

    Returns:
        ``(exact [N] float 0/1, score [N] float)``.
    """
    values = np.array([value_fn(p, o, t).value for p, o, t in zip(prompts, outputs, targets)], dtype=float)
    return (values >= value_fn.max_value).astype(float), values / value_fn.max_value


# ------------------------------------------------------------------------------------------ text metrics
def ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """The ``n``-grams of a word list, in order (``[]`` when it has fewer than ``n`` words)."""
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def distinct_n(responses: Sequence[str], n: int) -> float:
    """Dist-n (Li et al. 2016): distinct ``n``-grams over all ``n``-grams of all responses (0 when none).

    Corpus-level, so a policy that gives every prompt the same answer scores low even when each answer
    repeats nothing within itself.
    """
    grams = [g for r in responses for g in ngrams(r.split(), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def copy_counts(prompts: Sequence[str], responses: Sequence[str], n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Per response: how many of its word ``n``-grams occur in its prompt, and how many it has.

    The pooled share ``copied.sum() / total.sum()`` measures copying from the context (Ziegler et al. 2019,
    §4.3: their summarisation policies learned to copy whole sentences).

    Returns:
        ``(copied [N], total [N])`` integer counts.
    """
    copied, total = [], []
    for prompt, response in zip(prompts, responses):
        source = set(ngrams(prompt.split(), n))
        grams = ngrams(response.split(), n)
        copied.append(sum(g in source for g in grams))
        total.append(len(grams))
    return np.array(copied, dtype=float), np.array(total, dtype=float)


def response_lengths(responses: Sequence[str]) -> np.ndarray:
    """Words per response ``[N]``."""
    return np.array([len(r.split()) for r in responses], dtype=float)


def rouge(responses: Sequence[str], references: Sequence[str]) -> dict[str, np.ndarray]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measure per sample (torchmetrics' ROUGE: lower-cased, alphanumeric
    tokens, no stemming).

    Returns:
        ``{"rouge1": [N], "rouge2": [N], "rougeL": [N]}``.
    """
    from torchmetrics.functional.text.rouge import rouge_score

    keys = ("rouge1", "rouge2", "rougeL")
    out = {k: [] for k in keys}
    for response, reference in zip(responses, references):
        scores = rouge_score(response, reference, rouge_keys=keys)
        for k in keys:
            out[k].append(float(scores[f"{k}_fmeasure"]))
    return {k: np.array(v, dtype=float) for k, v in out.items()}


# ------------------------------------------------------------------------------------------- win rates
def wins(scores: Sequence[float], baseline_scores: Sequence[float], tie_tol: float = 1e-6) -> np.ndarray:
    """Per prompt: 1 when ``scores`` beats ``baseline_scores``, 0 when it loses, 0.5 for a tie (within
    ``tie_tol``). The mean is the win rate with ties counted as half (InstructGPT §4.1)."""
    d = np.asarray(scores, dtype=float) - np.asarray(baseline_scores, dtype=float)
    return np.where(np.abs(d) <= tie_tol, 0.5, (d > 0).astype(float))


# ------------------------------------------------------------------------- KL and perplexity to a baseline
def vocabulary_mismatch(tokenizer, baseline_tokenizer) -> str | None:
    """Why token-level comparisons (KL, perplexity) between two models are impossible, or None when
    their tokenizers map the same strings to the same ids."""
    if len(tokenizer) != len(baseline_tokenizer):
        return f"vocabularies differ in size ({len(tokenizer)} vs {len(baseline_tokenizer)} tokens)"
    if tokenizer.get_vocab() != baseline_tokenizer.get_vocab():
        return "tokenizers map tokens to different ids"
    if tokenizer.eos_token_id != baseline_tokenizer.eos_token_id:
        return f"EOS ids differ ({tokenizer.eos_token_id} vs {baseline_tokenizer.eos_token_id})"
    return None


@torch.no_grad()
def response_logprobs(policy, prompts: Sequence[str], response_ids: torch.Tensor, response_mask: torch.Tensor,
                      temperature: float = 1.0, batch_size: int = 32) -> torch.Tensor:
    """Per-token fp32 log-probs ``[N,R]`` of given responses under ``policy`` at ``temperature`` (0 on
    padding). Prompts are encoded by ``policy`` itself, so an encoder-decoder and a decoder-only model with
    one vocabulary can score the same response ids."""
    device = next(policy.parameters()).device
    out = []
    for i in range(0, len(prompts), batch_size):
        ids, mask = policy.encode_prompts(prompts[i:i + batch_size])
        r_ids, r_mask = response_ids[i:i + batch_size].to(device), response_mask[i:i + batch_size].to(device)
        logits = policy(ids.to(device), mask.to(device), r_ids, r_mask).logits
        out.append((ops.gather_logprobs(logits, r_ids, temperature) * r_mask).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def kl_per_sample(logp_policy: torch.Tensor, logp_baseline: torch.Tensor) -> np.ndarray:
    """Sequence-level KL estimate per sample, ``sum_t log pi(y_t) - log rho(y_t)`` on responses sampled
    from ``pi`` (the estimator PPO's ``ppo/kl`` logs); inputs ``[N,R]`` with 0 on padding."""
    return (logp_policy - logp_baseline).sum(-1).double().numpy()


# ------------------------------------------------------------------------------------------- intervals
def bootstrap_ci(stat: Callable[[np.ndarray], float], n: int, level: float = 0.95, n_boot: int = 1000,
                 seed: int = 0) -> tuple[float, float]:
    """Bias-corrected percentile bootstrap interval (Efron 1981) of ``stat`` over ``n`` samples.

    ``stat(idx)`` computes the statistic on the samples at the index array ``idx``; the bootstrap draws
    ``n_boot`` index arrays with replacement (fixed ``seed``). The bias correction shifts the percentiles
    by ``z0 = Phi^-1(share of resampled statistics below the full-sample one)``, which keeps statistics
    such as dist-n, whose resamples are biased (a resample repeats responses), inside their interval; where
    the bias is beyond what the correction can reach (every resample below the estimate, e.g. dist-1 = 1
    when no word repeats), the interval is widened to reach the estimate. With ``n == 0`` the interval is
    ``(nan, nan)``; with constant data it is the constant.
    """
    if n == 0:
        return float("nan"), float("nan")
    full = stat(np.arange(n))
    rng = np.random.default_rng(seed)
    boots = np.array([stat(rng.integers(0, n, n)) for _ in range(n_boot)])
    if np.allclose(boots, full):
        return float(full), float(full)
    normal = statistics.NormalDist()
    below = (np.sum(boots < full) + 0.5 * np.sum(boots == full)) / n_boot
    z0 = normal.inv_cdf(min(max(below, 1 / (n_boot + 1)), n_boot / (n_boot + 1)))
    z = normal.inv_cdf(0.5 + level / 2)
    lo, hi = np.quantile(boots, [normal.cdf(2 * z0 - z), normal.cdf(2 * z0 + z)])
    return float(min(lo, full)), float(max(hi, full))


def mean_estimate(values: Sequence[float], **kw) -> dict:
    """``{"value": mean, "ci": [lo, hi], "n": N}`` with a bootstrap interval (see :func:`bootstrap_ci`)."""
    v = np.asarray(values, dtype=float)
    value = float(v.mean()) if len(v) else float("nan")
    return {"value": value, "ci": list(bootstrap_ci(lambda i: v[i].mean(), len(v), **kw)), "n": len(v)}


def ratio_estimate(num: Sequence[float], den: Sequence[float], **kw) -> dict:
    """A pooled share ``sum(num) / sum(den)`` over samples with a bootstrap interval (0 when ``den`` sums
    to 0); ``n`` counts the samples."""
    a, b = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    share = lambda i: float(a[i].sum() / b[i].sum()) if b[i].sum() > 0 else 0.0
    return {"value": share(np.arange(len(a))), "ci": list(bootstrap_ci(share, len(a), **kw)), "n": len(a)}


def distinct_estimate(responses: Sequence[str], n: int, **kw) -> dict:
    """:func:`distinct_n` of all responses with a bootstrap interval over responses."""
    stat = lambda i: distinct_n([responses[j] for j in i], n)
    return {"value": stat(range(len(responses))), "ci": list(bootstrap_ci(stat, len(responses), **kw)),
            "n": len(responses)}


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error ``sd / sqrt(n)`` (nan for a single value): for a handful of seeds,
    where a bootstrap has too few samples to resample."""
    n = len(values)
    m = sum(values) / n
    return m, (statistics.stdev(values) / n ** 0.5 if n > 1 else float("nan"))
