"""Where a campaign's items come from: K samples per prompt from a policy, or an existing JSONL file.

:func:`sample_items` is the papers' step 1 input (InstructGPT §3.5: K = 4..9 samples per prompt;
Ziegler et al. 2019 §2: 4). It records the policy, the sampling settings and the seed in every
item's ``meta``, so each exported label says how its responses were made. The prompt set is a file
(:func:`read_prompts`) or a built-in task (:func:`task_prompts`, the same prompt stream as
``python -m feedback_lm.collect``). :func:`read_items` takes responses that were sampled already (any
comparisons JSONL, labels ignored); :func:`read_gold` takes gold items with known answers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from feedback_lm.data.comparisons import load_comparisons
from feedback_lm.errors import UserError

__all__ = ["interleave_gold", "read_gold", "read_items", "read_prompts", "sample_items", "task_prompts"]


def read_prompts(path: str | os.PathLike) -> list[str]:
    """Prompts from a ``.txt`` file (one per non-blank line; ``\\n`` written as backslash-n becomes a
    newline) or a ``.jsonl`` file of ``{"prompt": "..."}`` rows.

    Raises:
        UserError: missing file, no prompts, or a JSONL row without a string ``"prompt"``.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"prompt file not found: {p}")
    prompts = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if p.suffix == ".jsonl":
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{p}:{n}: not valid JSON ({err.msg}); expected {{\"prompt\": \"...\"}}") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise UserError(f'{p}:{n}: expected {{"prompt": "..."}}, got {line[:60]!r}')
            prompts.append(row["prompt"])
        else:
            prompts.append(line.replace("\\n", "\n"))
    if not prompts:
        raise UserError(f"{p} has no prompts")
    return prompts


def task_prompts(task: str, num_prompts: int, seed: int, difficulty: dict | None = None,
                 template: str = "Q: {input}\nA:") -> list[str]:
    """Prompts of a built-in task, from the same seeded stream as ``feedback_lm.collect``."""
    from feedback_lm.collect import PROMPT_SEED_OFFSET
    from feedback_lm.data import tasks

    examples = tasks.generate(task, num_prompts, seed=seed + PROMPT_SEED_OFFSET, **(difficulty or {}))
    return [tasks.format_prompt(ex, template) for ex in examples]


def sample_items(model: Any, prompts: list[str], k: int = 4, *, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 48, batch_size: int = 16, seed: int = 0,
                 device: str | None = None) -> list[dict]:
    """Sample ``k`` responses per prompt (pure sampling at ``temperature``, nucleus ``top_p``).

    Args:
        model: a tiny preset, a saved model directory (a run's ``<run>/model``) or a Hugging Face name
            (see :func:`feedback_lm.collect.resolve_model`), or a built :class:`~feedback_lm.policy.Policy`.
        seed: ``torch.manual_seed`` before building (a preset's random weights) and before sampling.

    Returns:
        Items ``{"prompt", "responses", "meta": {"policy", "sampling", "seed", "index"}}``.

    Raises:
        UserError: ``k < 2``, a bad sampling setting or an unknown model.
    """
    import torch

    from feedback_lm.collect import resolve_model
    from feedback_lm.policy import Policy

    if not isinstance(k, int) or k < 2:
        raise UserError(f"--k must be an integer >= 2 (a comparison needs two responses), got {k!r}")
    if not temperature > 0 or not 0 < top_p <= 1:
        raise UserError(f"sampling needs temperature > 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    if isinstance(model, str):
        name = model
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(seed)
        policy = Policy.from_config(resolve_model(model)).to(device)
    else:
        policy, name = model, getattr(model, "name", None) or type(model).__name__
    sampling = {"temperature": float(temperature), "top_k": 0, "top_p": float(top_p),
                "max_new_tokens": int(max_new_tokens), "k": k}
    torch.manual_seed(seed)
    items = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        texts = policy.generate_text(batch, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                                     top_k=0, top_p=top_p, num_return_sequences=k)
        for j, prompt in enumerate(batch):  # rows come out prompt-major
            items.append({"prompt": prompt, "responses": texts[j * k:(j + 1) * k],
                          "meta": {"policy": name, "sampling": sampling, "seed": seed, "index": start + j}})
    return items


def read_items(path: str | os.PathLike) -> list[dict]:
    """Items from any comparisons JSONL (e.g. ``feedback_lm.collect`` output): prompt, responses and meta
    are kept, the labels are dropped (people label them again)."""
    return [{"prompt": c.prompt, "responses": c.responses, "meta": c.meta} for c in load_comparisons(path)]


def read_gold(path: str | os.PathLike) -> list[dict]:
    """Gold items from a comparisons JSONL: the row's label is the known answer (``gold`` tiers)."""
    return [{"prompt": c.prompt, "responses": c.responses, "meta": c.meta, "gold": c.tiers}
            for c in load_comparisons(path)]


def interleave_gold(items: list[dict], gold: list[dict]) -> list[dict]:
    """Spread gold items evenly through the others (people get items in this order, so gold items at
    the end would only be seen once everything else is labeled).

    Example: 6 items and 2 gold items give ``i i g i i g i i``.
    """
    out, step = [], len(items) / (len(gold) + 1)
    cuts = [round(step * (j + 1)) for j in range(len(gold))]
    start = 0
    for g, cut in zip(gold, cuts):
        out += items[start:cut] + [g]
        start = cut
    return out + items[start:]
