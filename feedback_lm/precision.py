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
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, MutableMapping
from pathlib import Path

import torch

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
    frozen = [] if module is None or torch.is_grad_enabled() else [
        p for p in module.parameters() if not p.requires_grad and p.dtype == torch.float32]
    with torch.autocast(device_type, dtype=torch.get_autocast_dtype(device_type), cache_enabled=True):
        try:
            for p in frozen:
                p.requires_grad_(True)
            yield
        finally:
            for p in frozen:
                p.requires_grad_(False)
            torch.clear_autocast_cache()  # never reused after this block (an optimizer step may follow)
