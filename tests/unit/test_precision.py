"""trainer.precision=auto: bf16-mixed on CPUs with native bf16, fp32 elsewhere; explicit values untouched."""

from __future__ import annotations

import logging

import pytest
from omegaconf import OmegaConf

from feedback_lm import precision
from feedback_lm.precision import auto_precision, cpu_flags, cpu_has_native_bf16, resolve_precision

SAPPHIRE_RAPIDS = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n"


def test_cpu_flags_reads_the_flags_line():
    assert cpu_flags(SAPPHIRE_RAPIDS) == {"fpu", "sse2", "avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    assert cpu_flags("processor: 0\n") == set()


@pytest.mark.parametrize(("flags", "native"), [
    ({"avx512f", "avx512_bf16"}, True),       # Zen 4/5, Cooper Lake
    ({"amx_bf16"}, True),                      # AMX without the AVX-512 bf16 flag
    ({"avx512f", "avx512bw"}, False),          # Skylake: bf16 only emulated (slower than fp32)
    ({"avx2", "fma"}, False),
])
def test_native_bf16_needs_avx512_bf16_or_amx(flags, native):
    assert cpu_has_native_bf16(flags) is native


def test_auto_on_cpu_follows_the_cpu():
    assert auto_precision("cpu", native_cpu_bf16=True) == "bf16-mixed"
    assert auto_precision("cpu", native_cpu_bf16=False) == "32-true"


def test_resolve_replaces_auto_and_logs_one_line(monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_flags", lambda: cpu_flags(SAPPHIRE_RAPIDS))
    cfg = OmegaConf.create({"accelerator": "cpu", "precision": "auto"})
    with caplog.at_level(logging.INFO, logger="feedback_lm.precision"):
        assert resolve_precision(cfg) == "bf16-mixed"
    assert cfg.precision == "bf16-mixed"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("precision: bf16-mixed") and "32-true forces fp32" in lines[0]

    monkeypatch.setattr(precision, "cpu_flags", lambda: cpu_flags(SKYLAKE))
    cfg = OmegaConf.create({"accelerator": "cpu", "precision": "auto"})
    assert resolve_precision(cfg) == "32-true" and cfg.precision == "32-true"


def test_explicit_precision_is_kept(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: cpu_flags(SAPPHIRE_RAPIDS))
    cfg = OmegaConf.create({"accelerator": "cpu", "precision": "32-true"})
    assert resolve_precision(cfg) == "32-true" and cfg.precision == "32-true"


def test_cpu_trainer_config_defaults_to_auto(tmp_path):
    from feedback_lm.testing import compose

    cfg = compose([f"run_dir={tmp_path}"])
    assert cfg.trainer.precision == "auto"
    assert compose([f"run_dir={tmp_path}", "trainer.precision=32-true"]).trainer.precision == "32-true"


# ----------------------------------------------------------------------- cached weight casts in generation
def _policy(model):
    import torch

    from feedback_lm.policy import Policy

    torch.manual_seed(0)
    return Policy.from_config({"preset": model, "tokenizer": "byte"}).train()


def _greedy(policy):
    ids, mask = policy.encode_prompts(["Sort: b a", "Sort the words: c b a d"])
    return policy.generate(ids, mask, max_new_tokens=6, do_sample=False, stop_at_eos=False, output_logprobs=True)


def test_cached_weight_casts_only_inside_an_uncached_autocast_region():
    import torch

    with precision.cached_weight_casts("cpu"):
        assert not torch.is_autocast_enabled("cpu")  # no autocast: nothing to cache, nothing turned on
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        with precision.cached_weight_casts("cpu"):
            assert torch.is_autocast_cache_enabled()
            assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert not torch.is_autocast_cache_enabled()


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-t5"])
def test_generation_with_cached_casts_is_exact_and_never_stale(model, monkeypatch):
    import contextlib

    import torch

    import feedback_lm.policy

    policy = _policy(model)
    # Lightning's bf16 autocast: one region around the whole training step, torch's cast cache off
    region = lambda: torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False)  # noqa: E731
    with region():
        cached = _greedy(policy)
        with monkeypatch.context() as m:
            m.setattr(feedback_lm.policy, "cached_weight_casts", lambda device, module=None: contextlib.nullcontext())
            plain = _greedy(policy)
    assert torch.equal(cached.response_ids, plain.response_ids)
    assert torch.equal(cached.logprobs, plain.logprobs)  # the same bf16 casts, made once instead of per token

    # an optimizer step between two generations of one region: the second must see the new weights
    with region():
        before = _greedy(policy)
        with torch.no_grad():
            for p in policy.model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        after = _greedy(policy)
    with region():
        fresh = _greedy(policy)
    assert not torch.equal(before.logprobs, after.logprobs)
    assert torch.equal(after.logprobs, fresh.logprobs)


def test_generation_caches_the_casts_of_frozen_lora_base_weights():
    """torch caches only casts of weights that require gradients; in generation (a no-grad block) a LoRA
    model's frozen base weights are cast once per call too, with the same tokens, and stay frozen."""
    import contextlib

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    import feedback_lm.policy
    from tests.conftest import tiny_policy

    policy = tiny_policy("tiny-gpt2", lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": None})
    frozen = {p.data_ptr() for p in policy.model.parameters() if not p.requires_grad and p.dim() == 2}
    assert frozen

    class CountCasts(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._to_copy.default and args[0].data_ptr() in frozen:
                CountCasts.n += 1
            return func(*args, **(kwargs or {}))

    def run(patched: bool):
        CountCasts.n = 0
        with contextlib.ExitStack() as stack:
            if patched:  # the casts as before: frozen weights not cached
                stack.enter_context(pytest.MonkeyPatch.context()).setattr(
                    feedback_lm.policy, "cached_weight_casts",
                    lambda device, module=None: precision.cached_weight_casts(device))
            stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False))
            stack.enter_context(CountCasts())
            out = _greedy(policy)
        return out, CountCasts.n

    cached, n_cached = run(False)
    plain, n_plain = run(True)
    assert torch.equal(cached.response_ids, plain.response_ids) and torch.equal(cached.logprobs, plain.logprobs)
    assert 0 < n_cached < n_plain / 3, (n_cached, n_plain)  # once per call, not once per token (6 tokens)
    assert all(not p.requires_grad for p in policy.model.parameters() if p.data_ptr() in frozen)
