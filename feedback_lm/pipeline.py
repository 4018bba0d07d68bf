"""Multi-stage runs: SFT -> labels -> reward model -> PPO (InstructGPT's recipe) in one command.

An experiment config with a ``pipeline:`` list turns ``python train.py experiment=<name>`` into a chain
of ordinary runs, each in its own sub-directory of the run dir::

    pipeline:
      - name: sft                                   # a training stage: train.py overrides
        overrides: [algo=sft, trainer.max_steps=600]
      - name: labels                                # a labelling stage: feedback_lm.collect.collect(...)
        collect: {model: "{sft}/model", task: word_sorting, num_prompts: 1500, k: 4, out: "{run_dir}/labels.jsonl"}
      - name: ppo
        overrides: [algo=ppo, "model.name_or_path={sft}/model", model.preset=null, ...]

``{<stage name>}`` in a string is that stage's directory and ``{run_dir}`` the pipeline's. Overrides given
on the command line (``seed=1``, ``model=tiny-gpt2``, ``trainer=gpu``, ...) apply to every training stage;
the stage's own overrides come after them. A stage whose directory already holds ``metrics.json`` (or
whose labels file exists) is skipped, so re-running the same command after an interruption resumes at
the first unfinished stage. At the end: ``pipeline.json`` (every stage's metrics), a summary table and,
when ``compare`` names two PPO stages, ``reward_hacking.png`` (score, KL and held-out accuracy per
iteration of both). ``summary.evaluate: {runs: [stages], baseline: stage, judge: stage, ...}`` evaluates the
stages' models with :mod:`feedback_lm.evaluate` into ``<run dir>/eval/``; summary rows whose metric is
``eval:<mode>/<name>`` (e.g. ``eval:greedy/exact_match``) show its numbers with their intervals.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from feedback_lm.checkpoint import write_json_atomic
from feedback_lm.errors import UserError

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def fill(text: str, dirs: Mapping[str, str]) -> str:
    """Replace ``{name}`` by ``dirs[name]``; an unknown name is a clear error (a typo in a stage)."""
    def sub(m: re.Match) -> str:
        if m.group(1) not in dirs:
            raise UserError(f"pipeline: '{{{m.group(1)}}}' in {text!r} names no earlier stage; known: {sorted(dirs)}")
        return dirs[m.group(1)]
    return _PLACEHOLDER.sub(sub, text)


def _fill_any(value: Any, dirs: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return fill(value, dirs)
    if isinstance(value, Mapping):
        return {k: _fill_any(v, dirs) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_fill_any(v, dirs) for v in value]
    return value


def command_line_overrides() -> list[str]:
    """The overrides the user typed, minus ``experiment=`` and ``run_dir=`` (they belong to the pipeline)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [o for o in HydraConfig.get().overrides.task
            if not o.lstrip("+~").startswith(("experiment=", "run_dir=", "hydra."))]


def run_pipeline(cfg: DictConfig, base_overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every stage of ``cfg.pipeline`` in order; return ``{stage: metrics}`` (also ``pipeline.json``)."""
    from feedback_lm.run import run as run_one

    stages = OmegaConf.to_container(cfg.pipeline, resolve=True)
    if not isinstance(stages, list) or not stages:
        raise UserError("pipeline: expected a non-empty list of stages (name + overrides | collect)")
    base = list(command_line_overrides() if base_overrides is None else base_overrides)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dirs: dict[str, str] = {"run_dir": str(run_dir)}
    results: dict[str, Any] = {}
    for i, stage in enumerate(stages):
        name = stage.get("name") or f"stage{i}"
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or name in dirs:
            raise UserError(f"pipeline: stage name {name!r} must be a unique identifier")
        stage_dir = run_dir / name
        dirs[name] = str(stage_dir)
        _banner(f"pipeline stage {i + 1}/{len(stages)}: {name}")
        if "collect" in stage:
            results[name] = _collect_stage(stage["collect"], dirs)
        elif "overrides" in stage:
            done = stage_dir / "metrics.json"
            if done.is_file():
                print(f"{name}: already done ({done}), skipping")
                results[name] = json.loads(done.read_text())
                continue
            overrides = [*base, *_fill_any(list(stage["overrides"]), dirs), f"run_dir={stage_dir}"]
            stage_cfg = _compose(overrides)
            (stage_dir / ".hydra").mkdir(parents=True, exist_ok=True)  # where a standalone run keeps its config
            OmegaConf.save(stage_cfg, stage_dir / ".hydra" / "config.yaml")
            results[name] = run_one(stage_cfg)
        else:
            raise UserError(f"pipeline stage {name!r}: give `overrides: [...]` (a training run) or `collect: {{...}}`")
    summary = OmegaConf.to_container(cfg.get("summary") or {}, resolve=True)
    if isinstance(summary, dict) and summary.get("evaluate"):
        results["eval"] = _evaluate_stages(summary["evaluate"], run_dir)
    write_json_atomic(run_dir / "pipeline.json", results)
    _print_table(summary, results, run_dir)
    compare = summary.get("compare") if isinstance(summary, dict) else None
    if compare:
        from feedback_lm.plots import plot_comparison

        out = plot_comparison({n: run_dir / n / "metrics.csv" for n in compare}, run_dir / "reward_hacking.png",
                              keys=summary.get("compare_keys", ["rollout/score_mean", "ppo/kl", "val/accuracy"]))
        if out:
            print(f"comparison plot: {out}")
    return results


def _compose(overrides: list[str]) -> DictConfig:
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside train.py: the app's search path applies
        return compose(config_name="train", overrides=overrides)
    from feedback_lm.testing import compose as compose_standalone

    return compose_standalone(overrides)


def _collect_stage(spec: Mapping[str, Any], dirs: Mapping[str, str]) -> dict[str, Any]:
    from feedback_lm.collect import collect

    spec = dict(_fill_any(dict(spec), dirs))
    out = Path(spec["out"])
    if out.is_file():
        print(f"labels already collected ({out}), skipping")
        return {"out": str(out), "skipped": True}
    out.parent.mkdir(parents=True, exist_ok=True)
    model = spec.pop("model")
    summary = collect(model, spec.pop("task"), spec.pop("out"), **spec)
    print(", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))
    return summary


def _evaluate_stages(spec: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    """``summary.evaluate``: ``python -m feedback_lm.evaluate`` on the named stages' models, against the
    ``baseline`` stage, judged by the ``judge`` stage's reward model (optional); the other keys are
    :func:`feedback_lm.evaluate.evaluate` settings. Writes ``<run dir>/eval/``; returns its ``eval.json``."""
    from feedback_lm.evaluate import evaluate

    done = run_dir / "eval" / "eval.json"
    if done.is_file():
        print(f"evaluation: already done ({done}), skipping")
        return json.loads(done.read_text())
    spec = dict(spec)
    runs, baseline, judge = spec.pop("runs"), spec.pop("baseline", None), spec.pop("judge", None)
    _banner("pipeline evaluation")
    return evaluate([str(run_dir / r) for r in runs], baseline=str(run_dir / baseline) if baseline else None,
                    judge=str(run_dir / judge / "model") if judge else None, out=run_dir / "eval", **spec)


def _banner(text: str) -> None:
    from rich.console import Console

    Console().rule(f"[bold]{text}")


def _print_table(summary: Mapping[str, Any], results: Mapping[str, Any], run_dir: Path) -> None:
    """``summary.rows``: ``[label, stage, metric]`` triples; ``before`` values come from ``before/<metric>``.

    A metric ``eval:<mode>/<name>`` comes from the pipeline's evaluation (``summary.evaluate``): ``after`` is
    the stage's value with its 95 % interval, ``before`` the evaluation baseline's."""
    from rich.console import Console
    from rich.table import Table

    rows = summary.get("rows") if isinstance(summary, Mapping) else None
    if not rows:
        return
    table = Table(title=summary.get("title", "pipeline summary"))
    for col in ("", "stage", "before", "after"):
        table.add_column(col, justify="left" if col in ("", "stage") else "right")
    from feedback_lm.evaluate import format_estimate

    evaluation = results.get("eval") or {}
    for label, stage, metric in rows:
        if metric.startswith("eval:"):
            key = metric[len("eval:"):]
            runs = evaluation.get("runs", {})
            before = format_estimate((runs.get(evaluation.get("baseline")) or {}).get("metrics", {}).get(key))
            table.add_row(label, stage, before, format_estimate((runs.get(stage) or {}).get("metrics", {}).get(key)))
            continue
        metrics = results.get(stage) or {}
        before, after = metrics.get("before/" + metric), metrics.get(metric)
        table.add_row(label, stage, "" if before is None else f"{before:.4g}", "" if after is None else f"{after:.4g}")
    console = Console()
    console.print(table)
    console.print(f"pipeline directory: {run_dir} (pipeline.json, one sub-directory per stage)")
