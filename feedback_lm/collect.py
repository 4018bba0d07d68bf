"""Collect comparison data: the papers' step 1 (InstructGPT §3.5, Ziegler et al. 2019 §2).

A policy samples K responses to each prompt of a task, a labeler orders them, and each prompt becomes
one row of a comparisons JSONL file that the reward model trains on::

    python -m feedback_lm.collect --model tiny-t5 --task word_sorting \\
        --difficulty '{"min_words": 2, "max_words": 3, "vocab_size": 30}' \\
        --num-prompts 500 --k 4 --mode rank --out comparisons.jsonl

``--model`` is a tiny preset (``tiny-t5``, ``tiny-gpt2``; random weights seeded by ``--seed``), a
local directory saved with ``save_pretrained`` (a run's ``<run>/model``; the run directory itself is
accepted too) or a Hugging Face hub name. The labeler is :class:`~feedback_lm.labelers.SimulatedLabeler`
(the task verifier, ``--mode rank|best``, ``--noise``).

Reproducibility: prompts are ``tasks.generate(task, num_prompts, seed + 20_011, **difficulty)``. The
offset keeps them apart from the SFT data module's streams (train = ``seed``, val = ``seed + 10_007``),
so comparisons are not collected on the prompts the policy was fine-tuned on. ``torch.manual_seed(seed)``
is set before the model is built and before sampling; the labeler's stream is ``seed``. Each row's
``meta`` records everything needed to redo it: the labeler's output (scores, noisy), target, policy,
sampling settings, seed, task, difficulty and template.

Rows whose K responses all score the same give no comparison pair (ties are dropped, InstructGPT
C.2); they are skipped and counted in the summary. An untrained model often produces such rows only.
Rows that rank two identical responses apart (a best-of-K winner sampled twice) are skipped and counted
too: the reward model's loader refuses them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from feedback_lm.data import tasks
from feedback_lm.errors import UserError
from feedback_lm.labelers import MODES, SimulatedLabeler
from feedback_lm.malloc import keep_freed_memory
from feedback_lm.models import TINY_PRESETS

__all__ = ["PROMPT_SEED_OFFSET", "collect", "main", "resolve_model"]

# Offset of the prompt stream from --seed; distinct from the SFT data module's 0 (train) and 10_007 (val).
PROMPT_SEED_OFFSET = 20_011
DEFAULT_TEMPLATE = "Q: {input}\nA:"


def resolve_model(spec: str) -> dict[str, Any]:
    """``--model`` -> a model config dict for :meth:`Policy.from_config`.

    Raises:
        UserError: a local path that does not exist or holds no saved model.
    """
    if spec in TINY_PRESETS:
        return {"name": spec, "preset": spec, "tokenizer": "byte"}
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        def saved(d: Path) -> bool:  # a full model, or a LoRA run's adapter (loaded onto its base, merged)
            return (d / "config.json").is_file() or (d / "adapter_config.json").is_file()

        if not saved(path) and saved(path / "model"):
            path = path / "model"  # a run directory: its saved model lives in <run>/model
        if not saved(path):
            raise UserError(f"--model {spec}: the directory has no config.json, so it is not a saved Hugging "
                            f"Face model. Pass a directory written by save_pretrained (a run's <run>/model), "
                            f"a tiny preset ({', '.join(sorted(TINY_PRESETS))}) or a hub name.")
        return {"name": path.name, "name_or_path": str(path)}
    if path.exists() or spec.startswith(("/", "./", "../", "~")) or spec.endswith(os.sep):
        raise UserError(f"--model {spec}: no such model directory. Pass a directory written by "
                        f"save_pretrained (a run's <run>/model), a tiny preset "
                        f"({', '.join(sorted(TINY_PRESETS))}) or a hub name such as google/flan-t5-base.")
    return {"name": spec, "name_or_path": spec}


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def collect(
    model: Any,
    task: str,
    out: str | os.PathLike,
    *,
    difficulty: Mapping[str, Any] | None = None,
    template: str = DEFAULT_TEMPLATE,
    num_prompts: int = 500,
    k: int = 4,
    mode: str = "rank",
    noise: float = 0.0,
    temperature: float = 1.0,
    max_new_tokens: int = 48,
    batch_size: int = 32,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Sample ``k`` responses per task prompt, label them, write the comparison rows to ``out``.

    Args:
        model: ``--model`` string (see :func:`resolve_model`) or an already built policy: anything with
            ``encode_prompts``, ``generate`` and ``decode`` like :class:`feedback_lm.policy.Policy`.
        task: a registered task name.
        out: the JSONL file to write (atomically, via ``write_comparisons``).
        difficulty: the task's difficulty knobs.
        template: prompt template with ``{input}``.
        num_prompts: prompts to sample for. k: responses per prompt (>= 2).
        mode, noise: the simulated labeler's settings (see :class:`SimulatedLabeler`).
        temperature, max_new_tokens: sampling settings (pure sampling: ``top_k=0``, ``top_p=1``).
        batch_size: prompts per ``generate`` call (``batch_size * k`` sequences).
        seed: see the module docstring.
        device: where a model built from a string runs; default CUDA if available, else CPU. A passed
            policy stays where it is.
        progress: show a progress bar over prompt batches.

    Returns:
        Summary: ``num_prompts``, ``rows_written``, ``skipped_all_tied``, ``skipped_degenerate`` (identical
        responses ranked apart, e.g. a best-of-K winner sampled twice), ``noisy_labels``,
        ``mean_score`` (over all samples), ``frac_any_correct`` (prompts with >= 1 correct sample), ``out``.
    """
    from feedback_lm.data.comparisons import (  # written alongside; lazy
        Comparison,
        degenerate,
        write_comparisons,
    )
    from feedback_lm.data.files import check_output_file

    check_output_file(out, "--out")  # before any sampling: a bad path must not cost the samples
    difficulty = dict(difficulty or {})
    _check(_is_int(num_prompts) and num_prompts >= 1, f"--num-prompts must be an integer >= 1, got {num_prompts!r}")
    _check(_is_int(k) and k >= 2, f"--k must be an integer >= 2 (a comparison needs two responses), got {k!r}")
    _check(_is_int(batch_size) and batch_size >= 1, f"--batch-size must be an integer >= 1, got {batch_size!r}")
    _check(_is_int(max_new_tokens) and max_new_tokens >= 1,
           f"--max-new-tokens must be an integer >= 1, got {max_new_tokens!r}")
    _check(isinstance(temperature, (int, float)) and temperature > 0,
           f"--temperature must be > 0 (collection samples), got {temperature!r}")
    labeler = SimulatedLabeler(task, mode=mode, noise=noise, seed=seed)  # validates mode and noise

    # Prompts first: a wrong task, knob or template fails before a model is loaded.
    examples = tasks.generate(task, num_prompts, seed=seed + PROMPT_SEED_OFFSET, **difficulty)
    prompts = [tasks.format_prompt(ex, template) for ex in examples]

    if isinstance(model, str):
        from feedback_lm.policy import Policy

        policy_name = model
        cfg = resolve_model(model)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        _check(not device.startswith("cuda") or torch.cuda.is_available(),
               f"--device {device}: CUDA is not available on this machine; use --device cpu")
        torch.manual_seed(seed)  # a tiny preset's random weights
        policy = Policy.from_config(cfg).to(device)
    else:
        policy, policy_name = model, getattr(model, "name", None) or type(model).__name__
    params = next(iter(policy.parameters()), None) if isinstance(policy, torch.nn.Module) else None
    model_device = params.device if params is not None else None

    sampling = {"temperature": float(temperature), "top_k": 0, "top_p": 1.0,
                "max_new_tokens": max_new_tokens, "k": k}
    common = {"policy": policy_name, "sampling": sampling, "seed": seed, "task": task,
              "difficulty": difficulty, "template": template}

    torch.manual_seed(seed)
    comps, skipped, skipped_degenerate, noisy, all_scores, any_correct = [], 0, 0, 0, [], 0
    starts = range(0, num_prompts, batch_size)
    with _progress_bar(progress, len(starts)) as advance:
        for start in starts:
            batch = prompts[start:start + batch_size]
            ids, mask = policy.encode_prompts(batch)
            if model_device is not None:
                ids, mask = ids.to(model_device), mask.to(model_device)
            gen = policy.generate(ids, mask, max_new_tokens=max_new_tokens, do_sample=True,
                                  temperature=temperature, top_k=0, top_p=1.0, num_return_sequences=k)
            texts = policy.decode(gen.response_ids, gen.response_mask)
            for j, prompt in enumerate(batch):
                i = start + j
                responses = texts[j * k:(j + 1) * k]  # generate returns rows prompt-major
                target = examples[i].target
                label = labeler.label(prompt, responses, target)
                scores = label.meta["scores"]
                all_scores.extend(scores)
                any_correct += max(scores) == 1.0
                noisy += label.meta["noisy"]
                if not label.has_pairs:
                    skipped += 1
                    continue
                meta = {**label.meta, "target": target, "index": i, **common}
                comp = Comparison(prompt=prompt, responses=responses, tiers=label.tiers, best=label.best, meta=meta)
                if degenerate(comp):  # a best-of-K winner sampled twice: the copy would be "worse" than itself
                    skipped_degenerate += 1
                    continue
                comps.append(comp)
            advance()

    write_comparisons(out, comps)
    return {
        "num_prompts": num_prompts,
        "rows_written": len(comps),
        "skipped_all_tied": skipped,
        "skipped_degenerate": skipped_degenerate,
        "noisy_labels": noisy,
        "mean_score": sum(all_scores) / len(all_scores),
        "frac_any_correct": any_correct / num_prompts,
        "out": str(out),
    }


class _progress_bar:
    """A rich progress bar over prompt batches on stderr (a no-op when disabled); yields ``advance()``."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total, self._progress = enabled, total, None

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(TextColumn("collecting"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("batches"), TimeRemainingColumn(), console=Console(stderr=True))
        self._progress.__enter__()
        task_id = self._progress.add_task("collect", total=self.total)
        return lambda: self._progress.advance(task_id)

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)
        return False


def _parse_difficulty(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"--difficulty is not valid JSON ({err.msg} at character {err.pos}): {text!r}; "
                        f"expected an object such as '{{\"min_words\": 2, \"max_words\": 3}}'") from None
    if not isinstance(value, dict):
        raise UserError(f"--difficulty must be a JSON object such as '{{\"min_words\": 2}}', got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m feedback_lm.collect",
        description="Sample K responses per task prompt, label them with the simulated labeler, and write "
                    "comparison rows (JSONL) for reward-model training.")
    p.add_argument("--model", required=True,
                   help="tiny preset (tiny-t5, tiny-gpt2), a saved model directory (a run's <run>/model) "
                        "or a Hugging Face hub name")
    p.add_argument("--task", required=True, help=f"task name ({', '.join(tasks.task_names())})")
    p.add_argument("--difficulty", default=None,
                   help='difficulty knobs as a JSON object, e.g. \'{"min_words":2,"max_words":3}\'')
    p.add_argument("--template", default=DEFAULT_TEMPLATE,
                   help=r'prompt template with {input}; a literal \n is read as a newline '
                        r'(default "Q: {input}\nA:")')
    p.add_argument("--num-prompts", type=int, default=500)
    p.add_argument("--k", type=int, default=4, help="responses sampled per prompt (>= 2)")
    p.add_argument("--mode", choices=MODES, default="rank", help="rank: tiers of equal score; best: best-of-K")
    p.add_argument("--noise", type=float, default=0.0, help="probability that a label contains one mistake")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=32, help="prompts per generate call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--out", default="comparisons.jsonl", help="output JSONL file (written atomically)")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # as a training run does: generation 1.06x faster without the page faults (docs/speed.md)
    try:
        summary = collect(
            args.model, args.task, args.out, difficulty=_parse_difficulty(args.difficulty),
            # A shell passes "\n" in "Q: {input}\nA:" as backslash + n; templates mean a newline.
            template=args.template.replace("\\n", "\n"),
            num_prompts=args.num_prompts, k=args.k, mode=args.mode, noise=args.noise,
            temperature=args.temperature, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
            seed=args.seed, device=args.device, progress=not args.no_progress)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {summary['rows_written']} comparison rows to {summary['out']}")
    print(f"  prompts: {summary['num_prompts']}, skipped (all {args.k} samples tied): "
          f"{summary['skipped_all_tied']}, skipped (identical responses ranked apart): "
          f"{summary['skipped_degenerate']}, noisy labels: {summary['noisy_labels']}")
    print(f"  mean score: {summary['mean_score']:.3f}, prompts with >= 1 correct sample: "
          f"{summary['frac_any_correct']:.1%}")
    if summary["rows_written"] == 0:
        print("warning: no row has a comparison pair (every prompt's samples scored the same). Sample more "
              "(--k), raise --temperature, or start from a model fine-tuned on the task.", file=sys.stderr)
    return summary


if __name__ == "__main__":
    main()
