"""Compare trained runs the way the papers do, from one command (docs/evaluation.md)::

    python -m feedback_lm.evaluate RUN [RUN ...] [--baseline RUN] [--data SPEC] [--judge RM_DIR] [--out DIR]

Each ``RUN`` is a run directory (its ``model/`` is loaded), a saved model directory, or a tiny preset
(``tiny-t5``, ``tiny-gpt2``: the untrained model, seeded by ``--seed``). Every run generates on one held-out
prompt set with the same settings, twice: greedy, and one sample per prompt at ``--temperature`` (seeded by
``--seed`` before each run, so the draw is reproducible). Then, per run and decoding mode:

* task exact match and graded score, also per task (the task verifiers, or ``--value final_answer`` for
  GSM8K-style final numbers); ROUGE-1/2/L F-measure against the references;
* dist-1 / dist-2, mean response length in words, and the share of response word n-grams copied from the
  prompt (``--copy-n``);
* against the baseline (``--baseline``, else the first RUN): the KL of the run to the baseline on the run's
  own responses, ``sum_t log pi - log rho`` at the sampling temperature (the estimator PPO logs), and the
  perplexity of the run's responses under the baseline; both need one vocabulary, else they are skipped
  with the reason in ``eval.json``;
* with ``--judge <reward model run>/model``: the mean reward-model score and the win rate against the
  baseline's response to the same prompt, ties counted as half (InstructGPT §4.1).

Every number comes with a 95 % bootstrap interval over prompts. Output in ``--out``: ``eval.json``,
``responses.jsonl`` (every prompt with each run's responses), ``plots/<metric>.png`` (one bar per run and
mode with its interval), and a table on the terminal. ``--campaign DIR`` also turns the responses into a
pairwise labeling campaign (each run against the baseline, K = 2, random order per item) whose human win
rates ``python -m feedback_lm.label stats DIR`` prints.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from feedback_lm import evaluation as ev
from feedback_lm.checkpoint import write_json_atomic
from feedback_lm.errors import UserError
from feedback_lm.malloc import keep_freed_memory
from feedback_lm.models import TINY_PRESETS

__all__ = ["build_parser", "evaluate", "format_estimate", "load_prompt_set", "main", "resolve_run"]

MODES = ("greedy", "sampled")
TABLE_METRICS = ("exact_match", "score", "rougeL", "dist1", "dist2", "length", "copy", "kl", "ppl_baseline",
                 "rm_score", "rm_win_rate")


# ----------------------------------------------------------------------------------------------- inputs
def resolve_run(spec: str) -> dict[str, Any]:
    """``RUN`` -> ``{"name", "model": model config dict, "config": run config path or None}``.

    Raises:
        UserError: a path that does not exist, or a directory without a saved model.
    """
    if spec in TINY_PRESETS:
        return {"name": spec, "model": {"name": spec, "preset": spec, "tokenizer": "byte"}, "config": None}
    path = Path(os.path.expanduser(spec))
    if not path.is_dir():
        raise UserError(f"{spec}: no such run directory. Give a run directory written by `python train.py` "
                        f"(with model/), a saved model directory, or a tiny preset ({', '.join(TINY_PRESETS)})")
    model = path if (path / "config.json").is_file() else path / "model"
    if not (model / "config.json").is_file():
        raise UserError(f"{spec}: no model/ in this run directory (a run with save_model=false, or one that did "
                        f"not finish). Re-run it with save_model=true, or point at a saved model directory")
    config = next((c for c in (model.parent / ".hydra" / "config.yaml", path / ".hydra" / "config.yaml")
                   if c.is_file()), None)
    name = path.name if path.name != "model" else path.parent.name
    return {"name": name, "model": {"name": name, "name_or_path": str(model)}, "config": config}


def load_prompt_set(data: str | None, run_config: Path | None, num_prompts: int, seed: int,
                    difficulty: dict | None = None, template: str = "Q: {input}\nA:") -> tuple[list[dict], str]:
    """The held-out rows ``{"prompt", "reference", "target", "task"}`` (reference and target may be None)
    and a description of where they came from.

    ``data``: a task name (its generated held-out stream for ``seed``, as the data module draws it), a BBH
    ``.json`` file (its held-out 20 %), a directory of them (up to ``num_prompts`` per task), a ``.jsonl``
    file (``prompt``, optional ``response`` / ``target`` / ``task``), or None: the held-out set of
    ``run_config``'s own data settings.
    """
    from feedback_lm.data import files, tasks
    from feedback_lm.data.datamodule import example_rows, generated_split

    def task_rows(examples, task):
        return [{**r, "reference": r.pop("response"), "task": task} for r in example_rows(examples, template)]

    def jsonl_row(r):
        target = r.get("target", r.get("response"))
        return {"prompt": r["prompt"], "reference": r.get("response", target),
                "target": None if target is None else str(target), "task": str(r.get("task", "jsonl"))}

    if data is None:
        if run_config is None:
            raise UserError("no prompt set: give --data (a task name, a BBH .json or a .jsonl file); the runs "
                            "carry no .hydra/config.yaml to take their held-out set from")
        rows, where = _config_rows(run_config)
    elif data.endswith(".jsonl"):
        rows, where = [jsonl_row(r) for r in files.load_jsonl(data, required=("prompt",))], data
    elif data.endswith(".json"):
        rows, where = task_rows(files.load_bbh(data, split="test"), Path(data).stem), f"{data} (held-out 20 %)"
    elif Path(data).is_dir():  # BBH's task files: up to num_prompts held-out examples of each task
        bbh = sorted(Path(data).glob("*.json"))
        rows = [row for f in bbh for row in task_rows(files.load_bbh(f, split="test"), f.stem)[:num_prompts]]
        num_prompts = len(rows)
        where = f"{data}: held-out 20 % of {len(bbh)} BBH task files"
    elif data in tasks.task_names():
        _, held_out = generated_split(data, 0, num_prompts, seed, difficulty)
        rows, where = task_rows(held_out, data), f"generated {data}, seed {seed}, difficulty {difficulty or {}}"
    else:
        raise UserError(f"--data {data}: not a task ({', '.join(tasks.task_names())}), a BBH .json file or a "
                        f"directory of them, or a .jsonl file")
    rows = rows[:num_prompts]
    if not rows:
        raise UserError(f"the prompt set ({where}) is empty: nothing to evaluate on")
    return rows, where


def _config_rows(config_path: Path) -> tuple[list[dict], str]:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(config_path)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    if not str(data.get("_target_", "")).endswith("TaskDataModule"):
        raise UserError(f"{config_path}: the run trained on {data.get('_target_')} data, which has no prompt/target "
                        f"held-out set; give --data (a task name, a BBH .json or a .jsonl file)")
    dm = instantiate(data)
    dm.setup()
    task = data.get("task") or Path(str(data.get("path"))).stem  # the verifier the run validated with
    rows = [{"prompt": r["prompt"], "reference": r["response"], "target": r["target"], "task": task}
            for r in dm.val_rows]
    return rows, f"held-out set of {config_path.parent.parent} ({dm.describe()})"


def value_fns(value: str, rows: Sequence[dict]) -> dict[str, Any]:
    """One value function per task of ``rows`` (``--value``: ``task`` = each task's verifier)."""
    from feedback_lm.values import build_value_fn

    names = dict.fromkeys(r["task"] for r in rows)
    if value == "task":
        return {t: build_value_fn({"name": "task", "task": t}) for t in names}
    try:
        fn = build_value_fn({"name": value})
    except UserError as err:
        raise UserError(f"--value {value}: {err}") from None
    return {t: fn for t in names}


# ------------------------------------------------------------------------------------------- generation
def load_policy(model_cfg: dict, seed: int, device: str):
    from feedback_lm.policy import Policy

    torch.manual_seed(seed)  # a preset's random weights
    policy = Policy.from_config({**model_cfg, "dropout": 0.0})
    return policy.to(device).eval()


@torch.no_grad()
def generate(policy, prompts: Sequence[str], mode: str, max_new_tokens: int, temperature: float, seed: int,
             batch_size: int) -> dict[str, Any]:
    """Responses of ``policy`` to ``prompts``: ``{"texts", "ids" [N,R], "mask" [N,R]}`` (ids on the CPU)."""
    device = next(policy.parameters()).device
    torch.manual_seed(seed)
    texts, ids, masks = [], [], []
    for i in range(0, len(prompts), batch_size):
        p_ids, p_mask = policy.encode_prompts(prompts[i:i + batch_size])
        gen = policy.generate(p_ids.to(device), p_mask.to(device), max_new_tokens=max_new_tokens,
                              do_sample=mode == "sampled", temperature=temperature)
        texts += policy.decode(gen.response_ids, gen.response_mask)
        ids.append(gen.response_ids.cpu())
        masks.append(gen.response_mask.cpu())
    width = max(t.shape[1] for t in ids)
    pad = lambda t, v: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=v)
    return {"texts": texts, "ids": torch.cat([pad(t, 0) for t in ids]),
            "mask": torch.cat([pad(m, False) for m in masks])}


# ---------------------------------------------------------------------------------------------- metrics
def text_metrics(rows: Sequence[dict], texts: Sequence[str], fns: dict, copy_n: int, boot: dict) -> dict[str, dict]:
    """Task, ROUGE, diversity, length and copying metrics of one run's responses (keys without the mode)."""
    prompts = [r["prompt"] for r in rows]
    out: dict[str, dict] = {}
    scored = [i for i, r in enumerate(rows) if r["target"] is not None]
    if scored:
        exact, score = [], []
        for i in scored:
            e, s = ev.task_scores(fns[rows[i]["task"]], [prompts[i]], [texts[i]], [rows[i]["target"]])
            exact.append(e[0])
            score.append(s[0])
        out["exact_match"] = ev.mean_estimate(exact, **boot)
        out["score"] = ev.mean_estimate(score, **boot)
        tasks_seen = dict.fromkeys(rows[i]["task"] for i in scored)
        if len(tasks_seen) > 1:
            for task in tasks_seen:
                sel = [j for j, i in enumerate(scored) if rows[i]["task"] == task]
                out[f"exact_match/{task}"] = ev.mean_estimate([exact[j] for j in sel], **boot)
                out[f"score/{task}"] = ev.mean_estimate([score[j] for j in sel], **boot)
    refs = [i for i, r in enumerate(rows) if r["reference"] is not None]
    if refs:
        for key, values in ev.rouge([texts[i] for i in refs], [rows[i]["reference"] for i in refs]).items():
            out[key] = ev.mean_estimate(values, **boot)
    out["dist1"] = ev.distinct_estimate(texts, 1, **boot)
    out["dist2"] = ev.distinct_estimate(texts, 2, **boot)
    out["length"] = ev.mean_estimate(ev.response_lengths(texts), **boot)
    out["copy"] = ev.ratio_estimate(*ev.copy_counts(prompts, texts, copy_n), **boot)
    return out


def baseline_metrics(policy, baseline, prompts: Sequence[str], gen: dict, temperature: float | None,
                     boot: dict) -> dict:
    """The perplexity of ``policy``'s responses under ``baseline`` (temperature 1) and, for sampled responses
    (``temperature`` given), the KL of ``policy`` to ``baseline`` at that temperature. On greedy responses
    the log-ratio is no KL estimate (they are not draws from ``policy``), so it is left out."""
    nll = -ev.response_logprobs(baseline, prompts, gen["ids"], gen["mask"], 1.0).sum(-1).double().numpy()
    ppl = ev.ratio_estimate(nll, gen["mask"].sum(-1).double().numpy(), **boot)
    out = {"ppl_baseline": {**ppl, "value": math.exp(ppl["value"]), "ci": [math.exp(c) for c in ppl["ci"]]}}
    if temperature is not None:
        lp = ev.response_logprobs(policy, prompts, gen["ids"], gen["mask"], temperature)
        lb = ev.response_logprobs(baseline, prompts, gen["ids"], gen["mask"], temperature)
        out["kl"] = ev.mean_estimate(ev.kl_per_sample(lp, lb), **boot)
    return out


# ------------------------------------------------------------------------------------------------ driver
def evaluate(runs: Sequence[str], baseline: str | None = None, data: str | None = None, judge: str | None = None,
             out: str | os.PathLike | None = None, *, num_prompts: int = 200, seed: int = 0,
             difficulty: dict | None = None, template: str = "Q: {input}\nA:", value: str = "task",
             max_new_tokens: int = 64, temperature: float = 1.0, batch_size: int = 32, copy_n: int = 3,
             n_boot: int = 1000, device: str | None = None, campaign: str | None = None,
             campaign_mode: str = "sampled", show: bool = True) -> dict[str, Any]:
    """Evaluate ``runs`` (and ``baseline``) on one prompt set; write ``eval.json`` and the plots to ``out``.

    Returns:
        The ``eval.json`` content: ``settings``, ``prompts``, ``baseline``, ``runs`` (name -> ``path``,
        ``metrics`` ``{"<mode>/<metric>": {"value", "ci", "n"}}``, ``skipped`` reasons) and ``out``.
    """
    if not runs:
        raise UserError("give at least one RUN to evaluate")
    if not 0 < temperature:
        raise UserError(f"--temperature must be > 0, got {temperature}")
    specs: dict[str, dict] = {}

    def add(spec: str) -> str:  # a name per distinct model; the same model named twice is evaluated once
        r = resolve_run(spec)
        same = next((n for n, s in specs.items() if s["model"] == r["model"]), None)
        if same is None:
            same = r["name"] if r["name"] not in specs else spec
            specs[same] = r
        return same

    base_name = add(baseline or runs[0])
    for spec in runs:
        add(spec)
    if campaign:
        from feedback_lm.label.pairwise import check_campaign_target

        check_campaign_target(campaign, len(specs))
    config = specs[base_name]["config"] or next((s["config"] for s in specs.values() if s["config"]), None)
    rows, where = load_prompt_set(data, config, num_prompts, seed, difficulty, template)
    fns = value_fns(value, rows)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    judge_model = _load_judge(judge, device) if judge else None
    out = Path(out or Path("outputs") / "eval" / dt.datetime.now().strftime("%Y-%m-%d/%H-%M-%S"))
    boot = {"n_boot": n_boot, "seed": seed}
    prompts = [r["prompt"] for r in rows]
    settings = {"seed": seed, "max_new_tokens": max_new_tokens, "temperature": temperature, "batch_size": batch_size,
                "copy_n": copy_n, "n_boot": n_boot, "level": 0.95, "value": value, "judge": judge, "device": device}

    gen_kw = {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed, "batch_size": batch_size}
    base_policy = load_policy(specs[base_name]["model"], seed, device)
    results: dict[str, dict] = {}
    responses: dict[str, dict[str, list[str]]] = {}
    rm_scores: dict[str, dict[str, torch.Tensor]] = {}
    for name, spec in specs.items():
        policy = base_policy if name == base_name else load_policy(spec["model"], seed, device)
        metrics, skipped = {}, {}
        mismatch = ev.vocabulary_mismatch(policy.tokenizer, base_policy.tokenizer)
        responses[name] = {}
        for mode in MODES:
            gen = generate(policy, prompts, mode, **gen_kw)
            responses[name][mode] = gen["texts"]
            for key, est in text_metrics(rows, gen["texts"], fns, copy_n, boot).items():
                metrics[f"{mode}/{key}"] = est
            if mismatch is None:
                for key, est in baseline_metrics(policy, base_policy, prompts, gen, temperature
                                                 if mode == "sampled" else None, boot).items():
                    metrics[f"{mode}/{key}"] = est
            if judge_model is not None:
                scores = judge_model(prompts, gen["texts"]).float().cpu()
                rm_scores.setdefault(name, {})[mode] = scores
                metrics[f"{mode}/rm_score"] = ev.mean_estimate(scores.numpy(), **boot)
        if mismatch is not None:
            skipped["kl"] = skipped["ppl_baseline"] = f"not computed against {base_name}: {mismatch}"
        results[name] = {"path": str(spec["model"].get("name_or_path") or spec["model"]["preset"]),
                         "metrics": metrics, "skipped": skipped}
    if judge_model is not None:
        for name in results:
            for mode in MODES:
                won = ev.wins(rm_scores[name][mode].numpy(), rm_scores[base_name][mode].numpy())
                results[name]["metrics"][f"{mode}/rm_win_rate"] = ev.mean_estimate(won, **boot)

    result = {"command": sys.argv, "settings": settings, "prompts": {"source": where, "n": len(rows)},
              "baseline": base_name, "runs": results, "out": str(out)}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "eval.json", result)
    _write_responses(out / "responses.jsonl", rows, responses)
    result["plots"] = [str(p) for p in plot_metrics(result, out / "plots")]
    if campaign:
        from feedback_lm.label.pairwise import create_pairwise_campaign

        create_pairwise_campaign(campaign, prompts, {n: r[campaign_mode] for n, r in responses.items()}, base_name,
                                 seed=seed, source={"eval": str(out / "eval.json"), "mode": campaign_mode})
    if show:
        print_tables(result)
    return result


def _load_judge(judge: str, device: str):
    """A reward model as ``(prompts, responses) -> scores [N]``; a clear error for anything else."""
    from feedback_lm.rewards import ModelReward

    if not Path(judge).is_dir():
        raise UserError(f"--judge {judge}: no such directory; give a reward model's <run>/model "
                        f"(trained with `python train.py algo=reward_model`)")
    reward = ModelReward(judge, device=device)
    return lambda prompts, texts: reward(prompts, texts)


def _write_responses(path: Path, rows: Sequence[dict], responses: dict[str, dict[str, list[str]]]) -> None:
    from feedback_lm.data.files import write_jsonl

    write_jsonl(path, ({**row, "responses": {n: {m: r[m][i] for m in MODES} for n, r in responses.items()}}
                       for i, row in enumerate(rows)))


# ----------------------------------------------------------------------------------------------- output
def format_estimate(est: dict | None, digits: int = 3) -> str:
    """``value [lo, hi]`` of an estimate (``-`` for None)."""
    if est is None:
        return "-"
    lo, hi = est["ci"]
    return f"{est['value']:.{digits}g} [{lo:.{digits}g}, {hi:.{digits}g}]"


def print_tables(result: dict) -> None:
    """A rich table: one row per decoding mode and metric (value [95 % interval]), one column per run."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{result['prompts']['n']} held-out prompts; baseline {result['baseline']} "
                        f"(value [95 % bootstrap interval])")
    table.add_column("metric")
    for name in result["runs"]:
        table.add_column(name, justify="right")
    for mode in MODES:
        for k in TABLE_METRICS:
            cells = [r["metrics"].get(f"{mode}/{k}") for r in result["runs"].values()]
            if any(cells):
                table.add_row(f"{mode}/{k}", *[format_estimate(c) for c in cells])
    console.print(table)
    for name, r in result["runs"].items():
        for what, why in r["skipped"].items():
            console.print(f"{name}: {what} skipped ({why})")
    console.print(f"eval.json, responses.jsonl and plots/ in {result['out']}")


def plot_metrics(result: dict, directory: Path) -> list[Path]:
    """One PNG per metric: a bar per run and decoding mode with its 95 % interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    names = [result["baseline"], *(n for n in result["runs"] if n != result["baseline"])]
    metrics = dict.fromkeys(k.split("/", 1)[1] for r in result["runs"].values() for k in r["metrics"])
    paths = []
    for metric in metrics:
        fig, ax = plt.subplots(figsize=(1.2 + 1.3 * len(names), 3.2))
        for j, mode in enumerate(MODES):
            ests = [result["runs"][n]["metrics"].get(f"{mode}/{metric}") for n in names]
            xs = [i + (j - 0.5) * 0.38 for i, e in enumerate(ests) if e]
            vals = [e["value"] for e in ests if e]
            err = [[max(e["value"] - e["ci"][0], 0) for e in ests if e], [max(e["ci"][1] - e["value"], 0) for e in ests if e]]
            if xs:
                ax.bar(xs, vals, width=0.38, yerr=err, capsize=3, label=mode, color=f"C{j}")
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        ax.set_title(f"{metric} (95 % bootstrap interval)", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        path = directory / f"{metric.replace('/', '_')}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


# -------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m feedback_lm.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (with model/), model directories or "
                                                          "tiny presets (untrained)")
    p.add_argument("--baseline", help="the run the others are compared with (default: the first RUN)")
    p.add_argument("--data", help="task name, BBH .json or a directory of them, or .jsonl (default: the baseline "
                                  "run's held-out set)")
    p.add_argument("--num-prompts", type=int, default=200, help="at most this many held-out prompts")
    p.add_argument("--difficulty", help="task difficulty knobs as JSON (with --data TASK)")
    p.add_argument("--template", default="Q: {input}\\nA:", help="prompt template (with --data TASK or .json)")
    p.add_argument("--value", default="task", help="scoring: task (the verifiers) or final_answer (GSM8K)")
    p.add_argument("--judge", help="a reward model's <run>/model: mean score and win rate against the baseline")
    p.add_argument("--out", help="output directory (default outputs/eval/DATE/TIME)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, bootstrap seed, generated prompt stream")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0, help="of the sampled responses")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--copy-n", type=int, default=3, help="n of the copied n-gram share")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--campaign", help="also create a pairwise labeling campaign in this directory")
    p.add_argument("--campaign-mode", choices=MODES, default="sampled", help="whose responses people compare")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # as a training run does: generation 1.06x faster without the page faults (docs/speed.md)
    try:
        difficulty = json.loads(args.difficulty) if args.difficulty else None
    except json.JSONDecodeError as err:
        print(f"error: --difficulty is not valid JSON ({err.msg})", file=sys.stderr)
        sys.exit(2)
    try:
        return evaluate(args.runs, args.baseline, args.data, args.judge, args.out, num_prompts=args.num_prompts,
                        seed=args.seed, difficulty=difficulty, template=args.template.replace("\\n", "\n"),
                        value=args.value, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                        batch_size=args.batch_size, copy_n=args.copy_n, n_boot=args.bootstrap, device=args.device,
                        campaign=args.campaign, campaign_mode=args.campaign_mode)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
