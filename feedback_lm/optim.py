"""Optimizers and learning-rate schedules shared by the plugins."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

SCHEDULES = ("constant", "cosine", "linear")


def fused_kernel(params: Iterable[torch.Tensor]) -> bool | None:
    """``fused=`` for ``torch.optim.Adam``/``AdamW``: True when every parameter is a float tensor on the CPU
    or on CUDA, where torch has a fused kernel (one pass over all parameters: on the CPU 5x faster than the
    default foreach kernel for the tiny presets in CPU time, docs/speed.md), else None (torch's default)."""
    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params) or None


def clippable(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Let Lightning clip the gradients of a fused optimizer under mixed precision.

    A fused torch optimizer declares that it unscales gradients inside ``step``
    (``_step_supports_amp_scaling``), and Lightning then refuses ``clip_gradients`` under any mixed
    precision, bf16 included, although bf16 has no loss scaling at all. Declaring it a plain optimizer
    makes a grad scaler (fp16) unscale before clipping, as for any optimizer; the fused step is unchanged.
    """
    optimizer._step_supports_amp_scaling = False
    return optimizer


def build_adamw(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0,
                betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, with the fused kernel where torch has one (:func:`fused_kernel`)."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters")
    return clippable(torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps,
                                       fused=fused_kernel(params)))


def lr_factor(step: int, total_steps: int, schedule: str = "cosine", warmup_steps: int = 0,
              min_ratio: float = 0.0) -> float:
    """Multiplier of the peak LR at optimizer step ``step`` (0-based).

    Linear warmup over ``warmup_steps``, then ``constant``, ``cosine`` decay to ``min_ratio`` of the peak
    (InstructGPT SFT decays to 10%, docs/algorithms.md §1.4) or ``linear`` decay to ``min_ratio`` (LHP anneals to 0).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule '{schedule}'; choose one of {SCHEDULES}")
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / span))
    if schedule == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, schedule: str = "cosine",
                    warmup_steps: int = 0, min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over :func:`lr_factor`, stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, schedule, warmup_steps, min_ratio))
