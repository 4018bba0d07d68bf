"""The worked example of plugins/README.md, run the way a user would: copied outside the repository,
found through PYTHONPATH and a config directory on Hydra's search path."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from feedback_lm.testing import Learns, check_plugin
from tests.conftest import REPO

FAST = ["algo.max_new_tokens=6", "algo.samples_per_prompt=2"]


def _write_example(root: Path, old: str | None = None, new: str = "") -> Path:
    """The README's two blocks under ``root`` (with ``old`` replaced by ``new`` in the code, if given)."""
    sys.modules.pop("reinforce_example", None)  # an earlier test's copy must not shadow this one
    text = (REPO / "plugins" / "README.md").read_text()
    code = re.search(r"`~/my_algos/reinforce_example.py`:\n\n```python\n(.*?)```", text, re.S).group(1)
    yaml = re.search(r"`~/my_algos/conf/algo/reinforce.yaml`:\n\n```yaml\n(.*?)```", text, re.S).group(1)
    (root / "conf" / "algo").mkdir(parents=True)
    if old is not None:
        assert old in code, f"{old!r} is no longer in the README example"
        code = code.replace(old, new)
    (root / "reinforce_example.py").write_text(code)
    (root / "conf" / "algo" / "reinforce.yaml").write_text(yaml)
    return root


def test_readme_example_passes_the_contract(tmp_path, monkeypatch):
    root = _write_example(tmp_path / "my_algos")
    monkeypatch.syspath_prepend(str(root))
    results = check_plugin("reinforce", config_dir=root / "conf", overrides=FAST)
    for metrics in results.values():
        assert "rollout/score_mean" in metrics and "train/loss" in metrics and "val/accuracy" in metrics


def test_readme_reward_callable_recipe(tmp_path, monkeypatch):
    """reward=callable reward.fn=<module>.<function>: the README's recipe for a user's own reward."""
    root = _write_example(tmp_path / "my_algos")
    (root / "my_rewards.py").write_text("def brevity(prompts, responses, targets):\n"
                                        "    return [1.0 / (1 + len(r)) for r in responses]\n")
    monkeypatch.syspath_prepend(str(root))
    results = check_plugin("reinforce", models=("tiny-gpt2",), config_dir=root / "conf",
                           overrides=[*FAST, "reward=callable", "reward.fn=my_rewards.brevity"])
    assert 0.0 < results["tiny-gpt2"]["rollout/score_mean"] <= 1.0


def test_check_plugin_names_a_reward_kept_in_the_hyperparameters(tmp_path, monkeypatch):
    root = _write_example(tmp_path / "my_algos", 'save_hyperparameters(ignore=["reward"])', "save_hyperparameters()")
    monkeypatch.syspath_prepend(str(root))
    with pytest.raises(AssertionError, match=r"save_hyperparameters\(ignore=\['reward'\]\)"):
        check_plugin("reinforce", models=("tiny-gpt2",), config_dir=root / "conf", overrides=FAST)


@pytest.mark.slow
def test_behavioural_check_catches_a_flipped_sign(tmp_path, monkeypatch):
    """The README example learns the toy reward; the same code with the loss sign flipped passes the
    contract but fails the opt-in behavioural check."""
    learns = Learns("rollout/score_mean", ["algo.lr=3e-3"], steps=18)
    good = _write_example(tmp_path / "good")
    monkeypatch.syspath_prepend(str(good))
    check_plugin("reinforce", models=(), config_dir=good / "conf", overrides=FAST, learns=learns)
    monkeypatch.undo()
    bad = _write_example(tmp_path / "bad", "return -(advantages", "return (advantages")
    monkeypatch.syspath_prepend(str(bad))
    with pytest.raises(AssertionError, match="did not rise"):
        check_plugin("reinforce", models=(), config_dir=bad / "conf", overrides=FAST, learns=learns)


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


def test_check_plugin_accepts_several_optimizer_steps_per_training_step(tmp_path, monkeypatch):
    """A plugin that calls opt.step() twice per training step (global_step advances by 2) still passes
    save -> resume."""
    root = _write_example(tmp_path / "my_algos", "        opt.step()\n", "        opt.step()\n        opt.step()\n")
    monkeypatch.syspath_prepend(str(root))
    check_plugin("reinforce", models=("tiny-gpt2",), config_dir=root / "conf", overrides=FAST)
