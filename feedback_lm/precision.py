"""Training precision: ``trainer.precision=auto`` picks bf16 autocast where the hardware has native bf16.

``auto`` (the default of ``conf/trainer/cpu.yaml``) becomes

* on the CPU: ``bf16-mixed`` when the CPU multiplies bf16 matrices natively (the ``avx512_bf16`` or
  ``amx_bf16`` instruction sets: current Xeons, AMD Zen 4/5), else ``32-true``. Emulated bf16 is slower
  than fp32, so CPUs without those instructions stay in fp32.
* on a GPU: ``bf16-mixed`` when the GPU supports bf16 (Ampere and newer), else ``32-true``.

``bf16-mixed`` keeps fp32 master weights and optimizer state and runs the forward and backward matrix
products under ``torch.autocast(dtype=bfloat16)``; log-softmax, whitening, GAE and the losses are computed
in fp32 by :mod:`feedback_lm.ops` whatever the autocast dtype. Any explicit value
(``trainer.precision=32-true``, ``bf16-mixed``, ...) is passed to Lightning unchanged. The measured speed-ups
are in ``docs/speed.md``.

Casts under autocast: :func:`cached_weight_casts` casts every weight once per ``generate`` call instead of
once per new token; :class:`FrozenCastCache` (``frozen_cast_cache`` in ``conf/train.yaml``) keeps the casts of
frozen weights (LoRA base weights, frozen references) for a whole fit instead of one per forward.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Iterator, MutableMapping
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn
from transformers.pytorch_utils import Conv1D

log = logging.getLogger(__name__)

AUTO = "auto"
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names of the native bf16 instructions


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The instruction-set flags of the first CPU in ``/proc/cpuinfo`` (or of ``cpuinfo``'s text); empty
    where the file does not exist (macOS, Windows)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        if not path.is_file():
            return set()
        cpuinfo = path.read_text(errors="replace")
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 | ARM
            return set(value.split())
    return set()


def cpu_has_native_bf16(flags: set[str] | None = None) -> bool:
    """True when the CPU has native bf16 matrix instructions (``avx512_bf16`` or ``amx_bf16``).

    Reads ``flags`` (default: :func:`cpu_flags`); without ``/proc/cpuinfo`` asks torch's own CPU probe.
    """
    flags = cpu_flags() if flags is None else flags
    if flags:
        return any(f in flags for f in NATIVE_BF16_FLAGS)
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(probe and probe())


def auto_precision(accelerator: str, native_cpu_bf16: bool | None = None) -> str:
    """What ``precision=auto`` means for ``accelerator`` (``cpu``, ``gpu``/``cuda`` or ``auto``)."""
    accelerator = str(accelerator).lower()
    if accelerator in ("gpu", "cuda") or (accelerator == AUTO and torch.cuda.is_available()):
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    if accelerator in ("cpu", AUTO):
        native = cpu_has_native_bf16() if native_cpu_bf16 is None else native_cpu_bf16
        return "bf16-mixed" if native else "32-true"
    return "32-true"  # other accelerators (mps, tpu): Lightning's own default


def resolve_precision(trainer_cfg: MutableMapping) -> str:
    """Replace ``precision: auto`` in a trainer config (in place) by what it means here, log one line
    saying which precision the run uses and why, and return it. Other values are left as they are."""
    value = str(trainer_cfg.get("precision", "32-true"))
    if value != AUTO:
        return value
    accelerator = str(trainer_cfg.get("accelerator", AUTO))
    chosen = auto_precision(accelerator)
    trainer_cfg["precision"] = chosen
    if chosen == "bf16-mixed" and accelerator == "cpu":
        why = "the CPU has native bf16 (avx512_bf16/amx_bf16)"
    elif chosen == "bf16-mixed":
        why = "the GPU supports bf16"
    else:
        why = "no native bf16 on this hardware"
    log.info("precision: %s (trainer.precision=auto: %s; trainer.precision=32-true forces fp32)", chosen, why)
    return chosen


@contextlib.contextmanager
def cached_weight_casts(device: torch.device | str, module: torch.nn.Module | None = None) -> Iterator[None]:
    """Inside an autocast region, cast each fp32 weight to the autocast dtype once for the whole block
    instead of at every forward; the cache is cleared on the way out.

    Lightning's autocast runs with torch's cast cache off (``cache_enabled=False``): a cached bf16 copy
    that outlived an optimizer step would hand out the old weights. Generation is a no-grad block with
    one forward per new token and no optimizer step inside, so there the cache is exact and saves one cast
    of every weight per token (sampling 1.1-1.2x faster on the bench models, docs/speed.md). Outside
    autocast, or when the region already caches, this does nothing.

    torch caches only the casts of weights that require gradients. With ``module`` given and gradients
    off (a no-grad block such as ``generate``), the module's frozen fp32 parameters (a LoRA model's base
    weights) are marked as requiring gradients for the block so that their casts are cached too, and
    unmarked on the way out; nothing inside a no-grad block records a graph, so no gradient can reach
    them.
    """
    device_type = torch.device(device).type
    if not torch.is_autocast_enabled(device_type) or torch.is_autocast_cache_enabled():
        yield
        return
    frozen = []
    if module is not None and not torch.is_grad_enabled():
        kept = {id(p) for m in module.modules() if type(m) in _PLAIN  # they keep their own casts for the fit
                for p in m.parameters(recurse=False)}
        frozen = [p for p in module.parameters() if not p.requires_grad and p.dtype == torch.float32 and id(p) not in kept]
    with torch.autocast(device_type, dtype=torch.get_autocast_dtype(device_type), cache_enabled=True):
        try:
            for p in frozen:
                p.requires_grad_(True)
            yield
        finally:
            for p in frozen:
                p.requires_grad_(False)
            torch.clear_autocast_cache()  # never reused after this block (an optimizer step may follow)


# --- Frozen weights cast once per fit -------------------------------------------------------------------

# module -> (key, weight cast, bias cast or None); weak, so that a deleted or deep-copied model takes nothing
# with it (a copy starts with no casts and makes its own from its own weights).
_CASTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# a LoRA base layer -> weakref to its peft layer, whose ``merged_adapters`` say when the base weights changed
_OWNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _kept_dtype(module: nn.Module, x: torch.Tensor) -> torch.dtype | None:
    """The autocast dtype when ``module``'s weight is a frozen fp32 one under autocast; else None. Also None
    while ``torch.compile`` traces (a cache it cannot see would break its graph) or a CUDA graph is captured
    (a cast made there would live in the graph's memory pool)."""
    w, device_type = module.weight, x.device.type
    if w.requires_grad or w.dtype != torch.float32 or not torch.is_autocast_enabled(device_type):
        return None
    if torch.compiler.is_compiling() or (device_type == "cuda" and torch.cuda.is_current_stream_capturing()):
        return None
    return torch.get_autocast_dtype(device_type)


def _kept_casts(module: nn.Module, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``module``'s weight and bias in ``dtype``: the kept cast of the frozen weight (and of a frozen bias),
    remade when the key says they may have changed; a trainable bias is cast at each call, as autocast does."""
    w, b = module.weight, module.bias
    owner = _OWNERS.get(module)
    owner = owner() if owner is not None else None
    frozen_bias = b is not None and not b.requires_grad
    key = (w.data_ptr(), w._version, dtype, tuple(getattr(owner, "merged_adapters", ())),
           (b.data_ptr(), b._version) if frozen_bias else None)
    entry = _CASTS.get(module)
    if entry is None or entry[0] != key:
        with torch.no_grad():
            entry = (key, w.to(dtype), b.to(dtype) if frozen_bias else None)
        _CASTS[module] = entry
    return entry[1], entry[2] if frozen_bias else (None if b is None else b.to(dtype))


class FrozenCastLinear(nn.Linear):
    """An ``nn.Linear`` whose frozen fp32 weight is cast to the autocast dtype once and the cast kept, instead
    of cast again at every forward (what autocast does for every weight that does not require gradients).

    The values are autocast's own: the same weight rounded the same way, the input cast as autocast casts
    it, the same product (outputs and gradients bit-identical, ``tests/unit/test_frozen_casts.py``). The cast is
    remade whenever the weight may have changed: another tensor (``data_ptr``), an in-place write (torch's
    version counter, which ``load_state_dict`` and ``copy_`` bump), another autocast dtype, or peft merging or
    unmerging the LoRA adapters around it (they write through ``.data``, which the counter does not see).
    Code that writes a frozen weight through ``.data`` itself calls :func:`drop_frozen_casts` after.

    A weight that requires gradients, a weight that is not fp32, or a forward outside autocast runs
    ``nn.Linear``'s own forward.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _kept_dtype(self, x)
        if dtype is None:
            return super().forward(x)
        weight, bias = _kept_casts(self, dtype)
        return F.linear(x.to(dtype), weight, bias)


class FrozenCastConv1D(Conv1D):
    """:class:`FrozenCastLinear` for Hugging Face's ``Conv1D`` (GPT-2's projections: ``x @ W + b``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _kept_dtype(self, x)
        if dtype is None:
            return super().forward(x)
        weight, bias = _kept_casts(self, dtype)
        return torch.addmm(bias, x.reshape(-1, x.size(-1)).to(dtype), weight).view(*x.shape[:-1], self.nf)


_KEEPING = {nn.Linear: FrozenCastLinear, Conv1D: FrozenCastConv1D}
_PLAIN = {v: k for k, v in _KEEPING.items()}


def cache_frozen_casts(model: nn.Module) -> int:
    """Turn every ``nn.Linear`` and ``Conv1D`` of ``model`` whose weight is frozen fp32 into its
    :class:`FrozenCastLinear` / :class:`FrozenCastConv1D` (in place: same parameters, same state dict, only
    the forward differs). Returns how many it turned."""
    n = 0
    for module in model.modules():
        base = getattr(module, "base_layer", None)
        if (type(base) in _KEEPING or type(base) in _PLAIN) and hasattr(module, "merged_adapters"):  # peft LoRA
            _OWNERS[base] = weakref.ref(module)
        new = _KEEPING.get(type(module))
        if new is not None and not module.weight.requires_grad and module.weight.dtype == torch.float32:
            module.__class__ = new
            n += 1
    return n


def drop_frozen_casts(model: nn.Module, restore: bool = False) -> None:
    """Forget the kept casts of ``model``'s frozen weights (they are remade at the next forward); with
    ``restore``, also turn its layers back into plain ``nn.Linear`` / ``Conv1D``."""
    for module in model.modules():
        if type(module) in _PLAIN:
            _CASTS.pop(module, None)
            if restore:
                module.__class__ = _PLAIN[type(module)]


class FrozenCastCache(Callback):
    """Keeps the bf16 casts of frozen weights (a LoRA model's base weights, a frozen reference or reward
    model) for the whole ``fit``/``validate``, so that they are cast once instead of at every forward.

    SmolLM2-135M with LoRA under CPU bf16 autocast casts 134.5 M frozen weights per forward; keeping the casts
    makes a training step 1.13-1.52x and a whole SFT or DPO run 1.07x faster (docs/speed.md). It holds two
    bytes per frozen weight, which autocast allocated and freed at every forward anyway.

    Args:
        enabled: ``auto`` (on when training runs on the CPU, where the casts are slow next to the matrix
            products and memory is plentiful), ``true`` (every device) or ``false``. Only under mixed
            precision (``bf16-mixed``, ``16-mixed``) and single-device or DDP strategies: FSDP and DeepSpeed
            shard the weights, and a full cast per rank would undo that.
    """

    def __init__(self, enabled: bool | str = AUTO) -> None:
        if enabled not in (True, False, AUTO):
            raise ValueError(f"frozen_cast_cache={enabled!r}: use auto, true or false")
        self.enabled = enabled

    def applies(self, trainer) -> bool:
        """Whether this trainer's run keeps the casts (see the class)."""
        from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

        strategy = trainer.strategy
        if self.enabled is False or not str(trainer.precision).endswith("-mixed"):
            return False
        if not isinstance(strategy, SingleDeviceStrategy | DDPStrategy) or "DeepSpeed" in type(strategy).__name__:
            return False
        return self.enabled is True or strategy.root_device.type == "cpu"

    def _install(self, trainer, pl_module) -> None:
        if self.applies(trainer):
            cache_frozen_casts(pl_module)

    def on_fit_start(self, trainer, pl_module) -> None:
        self._install(trainer, pl_module)

    def on_validation_start(self, trainer, pl_module) -> None:  # trainer.validate, and new frozen modules
        self._install(trainer, pl_module)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        drop_frozen_casts(pl_module, restore=True)
