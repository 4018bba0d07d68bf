"""The shared optimizer: fused AdamW where torch has the kernel, same updates as the default kernel."""

from __future__ import annotations

import torch

from feedback_lm.optim import build_adamw, fused_kernel


def test_fused_kernel_on_cpu_and_cuda_float_parameters_only():
    assert fused_kernel([torch.zeros(2), torch.zeros(3, dtype=torch.bfloat16)]) is True
    assert fused_kernel([torch.zeros(2), torch.zeros(2, device="meta")]) is None
    assert fused_kernel([torch.zeros(2, dtype=torch.long)]) is None


def test_fused_adamw_takes_the_same_steps_as_the_foreach_kernel():
    torch.manual_seed(0)
    start = [torch.randn(64, 32), torch.randn(32)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(5)]
    results = []
    for fused in (True, False):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        opt = build_adamw(params, lr=1e-2, weight_decay=0.1) if fused else \
            torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1, foreach=True)
        assert opt.defaults["fused"] is (True if fused else None)
        for g in grads:
            for p, gi in zip(params, g):
                p.grad = gi.clone()
            opt.step()
        results.append([p.detach() for p in params])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
