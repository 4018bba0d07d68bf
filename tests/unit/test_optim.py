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


def test_lightning_clips_a_fused_optimizer_under_bf16_mixed(tmp_path):
    """Lightning refuses clip_gradients for optimizers that unscale inside step (fused Adam) under mixed
    precision; build_adamw's optimizers declare themselves plain, so clipping works under bf16-mixed."""
    import lightning as L

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            return self.w(batch[0]).pow(2).mean() * 1e3

        def configure_optimizers(self):
            return build_adamw(self.parameters(), lr=1e-3)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)), batch_size=4)
    trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", max_steps=2, gradient_clip_val=1.0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(Tiny(), data)
    assert trainer.global_step == 2
