"""No file a user names can run code when it is loaded (issue 14): a crafted pickle's payload never runs.

Every option that takes a checkpoint goes through ``feedback_lm.checkpoint.load_state_dict_safely``
(``weights_only=True``); these tests hold a ``.ckpt`` whose unpickling would write a marker file and
assert that the marker never appears, on every path that accepts such a file.
"""

from __future__ import annotations

import os
import pickle
import zipfile

import pytest
import torch

from feedback_lm.checkpoint import load_state_dict_safely
from feedback_lm.errors import UserError
from feedback_lm.models import ModelConfig


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):  # unpickling this calls os.system(...)
        return (os.system, (f"touch {self.marker}",))


def _crafted_ckpt(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"policy.x": torch.zeros(1)}, "payload": _Payload(marker)}, path)
    return path, marker


def _raw_pickle(tmp_path):
    marker = tmp_path / "PWNED_RAW"
    path = tmp_path / "raw.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": {}, "payload": _Payload(marker)}))
    return path, marker


@pytest.mark.parametrize("make", [_crafted_ckpt, _raw_pickle])
def test_loader_refuses_code_and_never_runs_it(tmp_path, make):
    path, marker = make(tmp_path)
    with pytest.raises(UserError, match="algo.init_from=.*refused"):
        load_state_dict_safely(path, "algo.init_from")
    assert not marker.exists(), "the pickle's payload ran"


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04truncated", os.urandom(256)], ids=["empty", "truncated", "random"])
def test_corrupt_files_name_the_file(tmp_path, content):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=r"algo.generator_path=.*bad\.ckpt"):
        load_state_dict_safely(path, "algo.generator_path")


def test_missing_and_foreign(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_state_dict_safely(tmp_path / "nope.ckpt", "algo.init_from")
    torch.save({"weights": torch.ones(2)}, tmp_path / "foreign.ckpt")
    with pytest.raises(UserError, match="no 'state_dict'"):
        load_state_dict_safely(tmp_path / "foreign.ckpt", "algo.init_from")
    assert zipfile.is_zipfile(tmp_path / "foreign.ckpt")


def test_a_real_lightning_checkpoint_loads(tmp_path):
    """Our own checkpoints hold only tensors and plain containers, so ``weights_only=True`` reads them."""
    import lightning as L

    from plugins.sft import SFT

    module = SFT(policy=ModelConfig(name="tiny-gpt2", preset="tiny-gpt2").to_dict())
    module.configure_model()
    trainer = L.Trainer(accelerator="cpu", max_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "sft.ckpt")
    state = load_state_dict_safely(tmp_path / "sft.ckpt", "algo.init_from")
    assert any(k.startswith("policy.") for k in state)


def test_reward_model_init_from_never_runs_payload(tmp_path):
    from plugins.reward_model import RewardModel

    path, marker = _crafted_ckpt(tmp_path)
    rm = RewardModel(policy=ModelConfig(name="tiny-gpt2", preset="tiny-gpt2").to_dict(), init_from=str(path))
    with pytest.raises(UserError, match="algo.init_from"):
        rm.configure_model()
    assert not marker.exists()


@pytest.mark.parametrize("option", ["generator_path", "eval_generator_path"])
def test_self_correct_generator_paths_never_run_payload(tmp_path, option):
    from plugins.self_correct import SelfCorrect

    path, marker = _crafted_ckpt(tmp_path)
    module = SelfCorrect(policy=ModelConfig(name="tiny-gpt2", preset="tiny-gpt2").to_dict(), **{option: str(path)})
    with pytest.raises(UserError, match=f"algo.{option}"):
        module.configure_model()
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04truncated", bytes(range(256))])
def test_resume_checkpoint_is_checked_before_lightning_loads_it(tmp_path, content):
    from feedback_lm.checkpoint import load_checkpoint

    bad = tmp_path / "last.ckpt"
    bad.write_bytes(content)
    with pytest.raises(UserError, match=r"ckpt_path=.*last\.ckpt is not a checkpoint this project can load safely"):
        load_checkpoint(bad, "ckpt_path", mmap=True)
