"""The worked example of plugins/README.md, run the way a user would: copied outside the repository,
found through PYTHONPATH and a config directory on Hydra's search path."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from feedback_lm.testing import check_plugin
from tests.conftest import REPO


def _write_example(root: Path) -> Path:
    text = (REPO / "plugins" / "README.md").read_text()
    code = re.search(r"`~/my_algos/reinforce_example.py`:\n\n```python\n(.*?)```", text, re.S).group(1)
    yaml = re.search(r"`~/my_algos/conf/algo/reinforce.yaml`:\n\n```yaml\n(.*?)```", text, re.S).group(1)
    (root / "conf" / "algo").mkdir(parents=True)
    (root / "reinforce_example.py").write_text(code)
    (root / "conf" / "algo" / "reinforce.yaml").write_text(yaml)
    return root


def test_readme_example_passes_the_contract(tmp_path, monkeypatch):
    root = _write_example(tmp_path / "my_algos")
    monkeypatch.syspath_prepend(str(root))
    results = check_plugin("reinforce", config_dir=root / "conf",
                           overrides=["algo.max_new_tokens=6", "algo.samples_per_prompt=2"])
    for metrics in results.values():
        assert "rollout/score_mean" in metrics and "train/loss" in metrics


@pytest.mark.slow
def test_readme_example_runs_from_outside_the_repo(tmp_path):
    root = _write_example(tmp_path / "my_algos")
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, str(REPO / "train.py"), "-cd", str(root / "conf"), "algo=reinforce",
           "model=tiny-gpt2", "trainer.max_steps=3", "data.num_train=64", "data.num_val=8",
           "data.batch_size=4", "algo.max_new_tokens=6", "trainer.enable_progress_bar=false",
           f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["trainer/global_step"] == 3
    assert 0.0 <= metrics["rollout/score_mean"] <= 1.0
