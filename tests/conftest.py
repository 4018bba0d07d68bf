"""Shared fixtures: tiny policies of both families and the path to the shared third-party data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FEEDBACK_LM_SHARED_DATA", REPO.parent / "shared" / "data"))

# Keep the 2-core machines responsive and timings stable.
torch.set_num_threads(min(2, torch.get_num_threads()))


def tiny_policy(preset: str, seed: int = 0, **overrides):
    from feedback_lm.policy import Policy

    torch.manual_seed(seed)
    return Policy.from_config({"name": preset, "preset": preset, "tokenizer": "byte", **overrides})


@pytest.fixture(params=["tiny-t5", "tiny-gpt2"])
def policy(request):
    """A freshly initialised tiny policy of each family (fp32, dropout off)."""
    return tiny_policy(request.param)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set FEEDBACK_LM_SHARED_DATA)")
    return SHARED_DATA
