"""Frozen weights keep their bf16 casts for a whole fit (``feedback_lm.precision.FrozenCastCache``): the same
outputs and gradients as autocast, one cast instead of one per forward, and a new cast whenever the weight
may have changed."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from transformers.pytorch_utils import Conv1D

from feedback_lm.precision import (
    FrozenCastCache,
    FrozenCastConv1D,
    FrozenCastLinear,
    cache_frozen_casts,
    drop_frozen_casts,
)
from feedback_lm.testing import QUICK, compose
from tests.conftest import tiny_policy

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


class CountWeightCasts(TorchDispatchMode):
    """Counts the casts (``_to_copy``) of the tensors whose storage is in ``watched``."""

    def __init__(self, watched: set[int]):
        super().__init__()
        self.watched, self.n = watched, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default and args[0].data_ptr() in self.watched:
            self.n += 1
        return func(*args, **(kwargs or {}))


def _layer(kind: str, bias: str) -> nn.Module:
    torch.manual_seed(0)
    layer = nn.Linear(24, 16, bias=bias != "none") if kind == "linear" else Conv1D(16, 24)
    layer.weight.requires_grad_(False)
    if layer.bias is not None:
        layer.bias.requires_grad_(bias == "trainable")
    return layer


def _run(layer: nn.Module, x: torch.Tensor):
    x = x.clone().requires_grad_(True)
    with torch.autocast(**BF16):
        y = layer(x)
    y.float().pow(2).sum().backward()
    bias_grad = None if layer.bias is None or layer.bias.grad is None else layer.bias.grad.clone()
    if layer.bias is not None:
        layer.bias.grad = None
    return y, x.grad, bias_grad


@pytest.mark.parametrize(("kind", "bias"), [("linear", "none"), ("linear", "frozen"), ("linear", "trainable"),
                                            ("conv1d", "frozen"), ("conv1d", "trainable")])
def test_outputs_and_gradients_are_autocasts_to_the_bit(kind, bias):
    x = torch.randn(3, 5, 24)
    plain = _layer(kind, bias)
    kept = _layer(kind, bias)
    assert cache_frozen_casts(kept) == 1
    assert type(kept) is (FrozenCastLinear if kind == "linear" else FrozenCastConv1D)
    want = _run(plain, x)
    for _ in range(2):  # the first call makes the cast, the second reuses it
        got = _run(kept, x)
        assert got[0].dtype == want[0].dtype == torch.bfloat16
        for a, b in zip(got, want, strict=True):
            assert (a is None and b is None) or torch.equal(a, b)
    assert set(kept.state_dict()) == set(plain.state_dict())


def test_one_cast_per_fit_not_per_forward():
    layer = _layer("linear", "frozen")
    cache_frozen_casts(layer)
    x = torch.randn(4, 24)
    counter = CountWeightCasts({layer.weight.data_ptr(), layer.bias.data_ptr()})
    with counter, torch.autocast(**BF16):
        for _ in range(5):
            layer(x)
    assert counter.n == 2  # weight and bias, once
    plain = _layer("linear", "frozen")
    counter = CountWeightCasts({plain.weight.data_ptr(), plain.bias.data_ptr()})
    with counter, torch.autocast(**BF16):
        for _ in range(5):
            plain(x)
    assert counter.n == 10  # what autocast does for frozen weights: cast at every forward


def test_outside_autocast_trainable_or_low_precision_weights_run_linears_own_forward():
    layer = _layer("linear", "frozen")
    cache_frozen_casts(layer)
    x = torch.randn(4, 24)
    assert layer(x).dtype == torch.float32  # no autocast: fp32, as nn.Linear
    layer.weight.requires_grad_(True)  # unfrozen later: gradients reach it
    with torch.autocast(**BF16):
        layer(x).float().sum().backward()
    assert layer.weight.grad is not None
    bf16 = nn.Linear(24, 16).to(torch.bfloat16).requires_grad_(False)
    assert cache_frozen_casts(bf16) == 0  # nothing to cast


def test_a_new_cast_whenever_the_weight_may_have_changed():
    layer = _layer("linear", "frozen")
    cache_frozen_casts(layer)
    x = torch.randn(4, 24)

    def out():
        with torch.autocast(**BF16):
            return layer(x)

    def plain():
        with torch.autocast(**BF16):
            return nn.functional.linear(x, layer.weight, layer.bias)

    out()
    with torch.no_grad():
        layer.weight.mul_(2.0)  # in place: the version counter moves
    assert torch.equal(out(), plain())
    layer.load_state_dict({"weight": torch.randn(16, 24), "bias": torch.randn(16)})
    assert torch.equal(out(), plain())
    layer.weight.data = torch.randn(16, 24)  # another tensor
    assert torch.equal(out(), plain())
    layer.weight.data += 1.0  # through .data: invisible to the version counter, so drop the casts by hand
    drop_frozen_casts(layer)
    assert torch.equal(out(), plain())


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-t5"])
def test_peft_merge_and_unmerge_make_new_casts(preset):
    """peft writes merged weights through ``.data``; the cast follows the adapters' merged state."""
    policy = tiny_policy(preset, lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": None})
    with torch.no_grad():
        for n, p in policy.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # adapters that change the output
    assert cache_frozen_casts(policy.model) > 0
    ids = torch.randint(3, 200, (2, 6))
    mask = torch.ones_like(ids, dtype=torch.bool)

    def logits():
        with torch.no_grad(), torch.autocast(**BF16):
            return policy(ids, mask, ids, mask).logits if policy.is_encoder_decoder else \
                policy.model(input_ids=ids, attention_mask=mask).logits

    before = logits()
    policy.model.merge_adapter()
    merged = logits()  # adapters folded into the base weights: within bf16 rounding of the unmerged output
    assert (merged - before).abs().max() < 0.1 * before.abs().max()
    drop_frozen_casts(policy.model, restore=True)
    assert torch.equal(merged, logits())  # the kept casts were the merged weights'
    cache_frozen_casts(policy.model)
    logits()
    policy.model.unmerge_adapter()
    unmerged = logits()
    drop_frozen_casts(policy.model, restore=True)
    assert torch.equal(unmerged, logits())


def _trainer(precision="bf16-mixed", strategy="auto"):
    return SimpleNamespace(precision=precision, strategy=L.Trainer(
        accelerator="cpu", devices=1, strategy=strategy, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False).strategy)


def test_the_callback_applies_under_mixed_precision_single_device_or_ddp_only():
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    assert FrozenCastCache("auto").applies(_trainer())
    assert not FrozenCastCache(False).applies(_trainer())
    assert not FrozenCastCache("auto").applies(_trainer(precision="32-true"))
    assert not FrozenCastCache("auto").applies(_trainer(precision="bf16-true"))
    assert FrozenCastCache(True).applies(SimpleNamespace(precision="bf16-mixed", strategy=DDPStrategy(
        accelerator=None, parallel_devices=[torch.device("cpu")])))
    assert not FrozenCastCache(True).applies(SimpleNamespace(precision="bf16-mixed", strategy=FSDPStrategy()))
    with pytest.raises(ValueError, match="auto, true or false"):
        FrozenCastCache("sometimes")


def test_a_lora_dpo_fit_is_the_same_to_the_bit_and_its_layers_come_back_plain(tmp_path):
    """Three DPO steps of a LoRA GPT-2 (whose reference is the same model with its adapters off) under CPU
    bf16 autocast give the same adapters with and without kept casts; after the fit the layers are plain."""
    from hydra.utils import instantiate

    cfg = compose(["algo=dpo", "model=tiny-gpt2", "model.lora.r=4", "data=comparisons", f"run_dir={tmp_path}",
                   *QUICK, "algo.lr=1e-3", "algo.warmup_steps=0"])
    results, seen = {}, {}

    class Probe(L.Callback):
        def on_train_start(self, trainer, pl_module):
            self.start = {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen[self.enabled] = sum(type(m) is FrozenCastConv1D for m in pl_module.modules())

    for enabled in (True, False):
        L.seed_everything(0, verbose=False)
        module = instantiate(cfg.algo, _convert_="all")
        probe = Probe()
        probe.enabled = enabled
        trainer = L.Trainer(accelerator="cpu", devices=1, precision="bf16-mixed", max_steps=3, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            limit_val_batches=0, num_sanity_val_steps=0,
                            callbacks=[FrozenCastCache(enabled), probe])
        trainer.fit(module, datamodule=instantiate(cfg.data, _convert_="all"))
        results[enabled] = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
        assert not any(type(m) in (FrozenCastLinear, FrozenCastConv1D) for m in module.modules())
        assert any(not torch.equal(p, probe.start[n]) for n, p in results[enabled].items()), "nothing trained"
    assert seen[True] > 0 and seen[False] == 0
    assert results[True].keys() == results[False].keys() and any("lora" in n for n in results[True])
    for n, p in results[True].items():
        assert torch.equal(p, results[False][n]), n


def test_torch_compile_traces_the_plain_forward_in_one_graph():
    layer = _layer("linear", "frozen")
    cache_frozen_casts(layer)
    x = torch.randn(4, 24)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)  # a graph break would raise
    with torch.autocast(**BF16):
        assert torch.equal(compiled(x), nn.functional.linear(x, layer.weight, layer.bias))
