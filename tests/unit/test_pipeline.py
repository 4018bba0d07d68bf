"""feedback_lm.pipeline: stage placeholders and clear errors (the end-to-end run is in
tests/integration/test_ppo_cli.py)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from feedback_lm.errors import UserError
from feedback_lm.pipeline import fill, run_pipeline


def test_fill_replaces_stage_directories():
    dirs = {"run_dir": "/r", "sft": "/r/sft"}
    assert fill("model.name_or_path={sft}/model", dirs) == "model.name_or_path=/r/sft/model"
    assert fill("data.path={run_dir}/labels.jsonl", dirs) == "data.path=/r/labels.jsonl"
    assert fill("no placeholder", dirs) == "no placeholder"


def test_fill_names_the_unknown_stage():
    with pytest.raises(UserError, match="'{rm}'.*names no earlier stage"):
        fill("reward.path={rm}/model", {"run_dir": "/r", "sft": "/r/sft"})


@pytest.mark.parametrize("pipeline,needle", [
    ([], "non-empty list"),
    ([{"name": "a"}], "give `overrides"),
    ([{"name": "a", "collect": {"out": "{run_dir}/x.jsonl", "model": "m", "task": "t"}},
      {"name": "a", "overrides": []}], "unique identifier"),
])
def test_bad_pipelines_are_clear(tmp_path, pipeline, needle):
    cfg = OmegaConf.create({"pipeline": pipeline, "run_dir": str(tmp_path)})
    (tmp_path / "x.jsonl").write_text("")  # the collect stage counts as done
    with pytest.raises(UserError, match=needle):
        run_pipeline(cfg, base_overrides=[])
