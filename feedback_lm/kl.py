"""KL-coefficient (β) controllers for PPO with a KL penalty, docs/algorithms.md §3.6.

Usage per outer PPO step (docs/algorithms.md §3.5): build the rewards with ``ctl.value`` (the pre-update β), then call
``ctl.update(KL_t, n_steps=batch_size)`` with ``KL_t`` = batch mean of the per-sequence KL sums measured
on that rollout. The new β is used from the next rollout. Both controllers have ``state_dict`` /
``load_state_dict`` so that β survives a checkpoint resume.
"""

from __future__ import annotations

from typing import Any

from feedback_lm.errors import UserError

__all__ = ["AdaptiveKLController", "FixedKLController", "build_kl_controller"]


class FixedKLController:
    """Constant β; ``update`` is a no-op. [LHP:train_policy.py FixedKLController]

    Args:
        value: the KL coefficient β.
    """

    def __init__(self, value: float) -> None:
        self.value = float(value)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Does nothing: β stays fixed."""

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Proportional controller that steers the measured KL towards ``target``.

    Code form [LHP:train_policy.py AdaptiveKLController], docs/algorithms.md §3.6::

        e = clip(current_kl / target - 1, -0.2, 0.2)
        β *= 1 + e * n_steps / horizon

    The paper's gain is ``K_β = n_steps / horizon`` per update (512/10000 = 0.0512 in the released
    launch configs; 1024/10000 ≈ 0.1 with the paper's batch of 1024).

    Args:
        init: initial β.
        target: target KL in nats (per-sequence sum of token KLs, batch mean).
        horizon: number of episodes over which the proportional correction acts (LHP: 10000).
    """

    def __init__(self, init: float, target: float, horizon: int) -> None:
        self.value = float(init)
        self.target = float(target)
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move β after one rollout batch.

        Args:
            current_kl: ``KL_t`` measured on the rollout before optimising on it (float or 0-dim tensor).
            n_steps: episodes in this update (the rollout batch size).
        """
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        # Only β evolves; target and horizon come from the config on resume.
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


def build_kl_controller(
    kind: str, init: float, target: float | None, horizon: int
) -> FixedKLController | AdaptiveKLController:
    """Build a KL controller from config values.

    Args:
        kind: ``"fixed"`` or ``"adaptive"``.
        init: initial (or constant) β.
        target: target KL in nats; required for ``"adaptive"``, ignored for ``"fixed"``.
        horizon: adaptive horizon in episodes; ignored for ``"fixed"``.

    Raises:
        UserError: unknown ``kind``, or an adaptive controller without a positive target / horizon.
    """
    if kind == "fixed":
        return FixedKLController(init)
    if kind == "adaptive":
        if target is None or target <= 0:
            raise UserError(
                f"The adaptive KL controller needs a positive KL target (nats), got target={target!r}. "
                "Set the target (LHP/Ziegler use 6.0), or use the fixed controller."
            )
        if horizon <= 0:
            raise UserError(
                f"The adaptive KL controller needs a positive horizon (episodes), got horizon={horizon!r}. "
                "LHP uses 10000."
            )
        return AdaptiveKLController(init, target, horizon)
    raise UserError(f"Unknown KL controller kind {kind!r}: use 'fixed' or 'adaptive'.")
