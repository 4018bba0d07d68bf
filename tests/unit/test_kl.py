"""Unit tests of feedback_lm.kl against docs/algorithms.md §3.6 and §3.9 #6."""

import pytest
import torch

from feedback_lm.errors import UserError
from feedback_lm.kl import AdaptiveKLController, FixedKLController, build_kl_controller


@pytest.mark.parametrize(
    ("current_kl", "expected"),
    [(9.0, 0.151536), (6.0, 0.15), (3.0, 0.148464), (6.6, 0.150768)],
)
def test_adaptive_kl_spec_numbers(current_kl, expected):
    ctl = AdaptiveKLController(0.15, target=6.0, horizon=10000)
    ctl.update(current_kl, n_steps=512)
    assert ctl.value == pytest.approx(expected, abs=1e-9)


def test_adaptive_kl_clips_error_and_accepts_tensor():
    ctl = AdaptiveKLController(0.15, target=6.0, horizon=10000)
    ctl.update(torch.tensor(600.0), n_steps=512)  # error clipped to +0.2, same as KL 9
    assert ctl.value == pytest.approx(0.151536, abs=1e-9)
    ctl.update(0.0, n_steps=512)  # error -1 clipped to -0.2
    assert ctl.value == pytest.approx(0.151536 * (1 - 0.2 * 512 / 10000), abs=1e-9)


def test_fixed_kl_never_changes():
    ctl = FixedKLController(0.15)
    for current_kl in (0.0, 3.0, 9.0, 1e6):
        ctl.update(current_kl, n_steps=512)
    assert ctl.value == 0.15


def test_state_dict_round_trip():
    ctl = AdaptiveKLController(0.15, target=6.0, horizon=10000)
    ctl.update(9.0, n_steps=512)
    resumed = AdaptiveKLController(0.15, target=6.0, horizon=10000)
    resumed.load_state_dict(ctl.state_dict())
    assert resumed.value == pytest.approx(0.151536, abs=1e-9)
    resumed.update(9.0, n_steps=512)
    ctl.update(9.0, n_steps=512)
    assert resumed.value == ctl.value

    fixed = FixedKLController(0.2)
    restored = FixedKLController(0.01)
    restored.load_state_dict(fixed.state_dict())
    assert restored.value == 0.2


def test_build_kl_controller():
    fixed = build_kl_controller("fixed", 0.2, target=None, horizon=10000)
    assert isinstance(fixed, FixedKLController) and fixed.value == 0.2
    adaptive = build_kl_controller("adaptive", 0.15, target=6.0, horizon=10000)
    assert isinstance(adaptive, AdaptiveKLController)
    assert (adaptive.value, adaptive.target, adaptive.horizon) == (0.15, 6.0, 10000)


@pytest.mark.parametrize(
    ("kind", "target", "horizon", "message"),
    [
        ("pid", 6.0, 10000, "Unknown KL controller kind 'pid'"),
        ("adaptive", None, 10000, "needs a positive KL target"),
        ("adaptive", 0.0, 10000, "needs a positive KL target"),
        ("adaptive", 6.0, 0, "needs a positive horizon"),
    ],
)
def test_build_kl_controller_rejects_bad_config(kind, target, horizon, message):
    with pytest.raises(UserError, match=message):
        build_kl_controller(kind, 0.15, target=target, horizon=horizon)
