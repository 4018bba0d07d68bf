"""The benchmarks' own code paths run: bench_ppo's "ours" arm had been broken for a while (a plugin default
changed under it) and bench_rm's plain loop ran fp32 while it said bf16, both unnoticed because nothing
ran them. These run each for one or two steps; no timing is asserted (numbers belong in bench/README.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(autouse=True)
def _bench_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))


@pytest.mark.slow
def test_bench_ppo_ours_arm_runs_its_workload(tmp_path):
    import bench_ppo

    args = argparse.Namespace(family="gpt2", iters=1, warmup=1, seed=0, precision="auto", ours_override=[])
    result = bench_ppo.run_ours(args)  # raises if the rollout is not the workload (32 tokens, 16 minibatches)
    assert result["measured_iterations"] == 1 and result["response_tokens"] == bench_ppo.RESPONSE_LEN
    assert set(result["split_median_s"]) == set(bench_ppo.SPLIT_KEYS)


def test_bench_update_step_switches_variants(tmp_path, capsys):
    import bench_update_step

    out = tmp_path / "step.json"
    bench_update_step.main(["--family", "t5", "--variants", "hf,fused", "--rounds", "1", "--json", str(out)])
    variants = json.loads(out.read_text())["variants"]
    # T5's feed-forward change is bit-identical: the same loss with and without it
    assert variants["hf"]["loss"] == variants["fused"]["loss"]
    assert "fused" in capsys.readouterr().out


def test_bench_rm_plain_loop_autocasts_on_the_run_device(monkeypatch):
    import bench_rm
    import torch

    seen = []
    real = torch.autocast

    def spy(device_type, *a, **k):
        seen.append(device_type)
        return real(device_type, *a, **k)

    monkeypatch.setattr(torch, "autocast", spy)
    args = argparse.Namespace(device="cpu", precision="bf16-mixed", seed=0, k=2, batch=2, steps=1, warmup=1,
                              lr=1e-4, threads=None)
    rows = bench_rm.make_comparison_rows(4, 2, bench_rm.PROMPT_LEN, bench_rm.RESPONSE_LEN, 0)
    result = bench_rm.run_plain(args, rows)
    assert seen == ["cpu"] and result["measured_steps"] == 1  # it ran "cuda" on CPU runs: fp32 unnoticed


def test_bench_generation_alternates_cached_and_plain(tmp_path, capsys):
    import bench_generation

    out = tmp_path / "gen.json"
    bench_generation.main(["--family", "gpt2", "--rounds", "1", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["same_tokens"] is True  # the cache changes the speed, not the samples
    assert set(result["variants"]) == {"plain", "trainable", "cached"}


def test_bench_sampler_times_both_draws(tmp_path):
    import bench_sampler

    out = tmp_path / "sampler.json"
    result = bench_sampler.main(["--family", "gpt2", "--rows", "4", "--tokens", "3", "--rounds", "1",
                                 "--json", str(out)])
    assert json.loads(out.read_text())["family"] == "gpt2"
    for part in (result["draw"]["384"], result["draw"]["49152"], result["generate"]):
        assert set(part) == {"multinomial", "inverse_cdf"} and all(v["ms_median"] > 0 for v in part.values())


@pytest.mark.slow
def test_bench_default_times_two_trees_and_reads_their_metrics(tmp_path):
    import bench_default

    root = BENCH.parent
    summary = bench_default.main(["--before", str(root), "--before-arg", "frozen_cast_cache=false", "--rounds", "1", "--threads", "1", "--out", str(tmp_path / "runs"),
                                  "--json", str(tmp_path / "default.json"), "--", "trainer.max_steps=2",
                                  "trainer.val_check_interval=1", "data.num_train=16", "data.num_val=4",
                                  "data.eval_batch_size=4", "algo.max_new_tokens=4", "save_model=false"])
    (row,) = summary["rounds"]
    for arm in ("now", "before"):
        assert row[arm]["wall_s"] > 0 and 0 <= row[arm]["accuracy"] <= 1 and row[arm]["before_accuracy"] is not None
        assert (tmp_path / "runs" / f"{arm}0" / "metrics.json").is_file()
    saved = json.loads((tmp_path / "default.json").read_text())
    assert saved["median_ratio"] == row["ratio"] and saved["median_fit_ratio"] == row["fit_ratio"]
    assert saved["before_args"] == ["frozen_cast_cache=false"]
    overrides = {arm: (tmp_path / "runs" / f"{arm}0" / ".hydra" / "overrides.yaml").read_text() for arm in ("now", "before")}
    assert "frozen_cast_cache=false" in overrides["before"] and "frozen_cast_cache" not in overrides["now"]


@pytest.mark.slow
def test_bench_frozen_casts_runs_both_variants_on_smollm2(tmp_path, capsys):
    import bench_frozen_casts

    out = tmp_path / "fc.json"
    bench_frozen_casts.main(["--rows", "2", "--tokens", "8", "--rounds", "1", "--block", "1", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["frozen_layers"] == 211 and set(result["steps"]) == {"sft", "dpo"}
    assert all(step["same_loss"] for step in result["steps"].values()), capsys.readouterr().out
