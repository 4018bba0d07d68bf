"""Same maths, fewer kernels: changes to Hugging Face models that keep their function and cut CPU time.

Both are applied by :func:`feedback_lm.models.load_model` to every model it builds or loads (policy,
reference, reward and value models alike), and both are measured in docs/speed.md:

* :func:`fuse_gelu`: Hugging Face's ``gelu_new`` (GPT-2, FLAN-T5's gated FFN) is the tanh approximation
  of GELU written as five elementwise ops (``pow``, ``mul``, ``add``, ``tanh``, ``mul``), each a pass over
  the ``[B, T, 4d]`` activation, and each with its own backward; ``gelu_pytorch_tanh`` is the same
  function as one torch kernel (``gelu(x, approximate="tanh")``). A PPO update step of the benchmarks'
  4-layer GPT-2 under bf16 autocast: 1.24-1.52x faster. ``model.fused_gelu=false`` keeps the model's own.
* :func:`autocast_t5_feed_forward`: T5's feed-forward block casts its ``[B, T, d_ff]`` activation to
  ``wo``'s dtype before ``wo`` (for fp16 checkpoints that keep ``wo`` in fp32). Under autocast that
  cast goes bf16 -> fp32 and ``wo``'s autocast casts it straight back: two passes forward, two backward,
  that change no value. The replacement skips them under autocast only; outputs are bit-identical
  (``tests/unit/test_speedups.py``). A PPO update step of the benchmarks' T5: 1.05-1.12x faster.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.t5 import modeling_t5 as t5

# Activation names whose function torch computes in one kernel: Hugging Face name -> the fused name.
FUSED_GELU = {"gelu_new": "gelu_pytorch_tanh"}
# The config fields that name an activation (GPT-2, T5, Llama-style models).
_ACTIVATION_KEYS = ("activation_function", "dense_act_fn", "hidden_act")


def fuse_gelu(hf_config) -> list[str]:
    """Point every activation field of ``hf_config`` that names ``gelu_new`` at ``gelu_pytorch_tanh``
    (in place, before the model is built from it). Returns the fields it changed."""
    changed = []
    for key in _ACTIVATION_KEYS:
        value = getattr(hf_config, key, None)
        if isinstance(value, str) and value in FUSED_GELU:
            setattr(hf_config, key, FUSED_GELU[value])
            changed.append(key)
    return changed


def autocast_t5_feed_forward(model: nn.Module) -> int:
    """Swap T5's feed-forward blocks (plain and gated) for subclasses that skip the no-op up-cast before
    ``wo`` while autocast is on; with autocast off they run Hugging Face's own forward. Returns how many
    blocks were swapped (0 for a model that is not a T5)."""
    n = 0
    for module in model.modules():
        new = T5_FEED_FORWARD.get(type(module))
        if new is not None:
            module.__class__ = new  # same parameters and state; only forward differs
            n += 1
    return n


def _autocasting(x: torch.Tensor) -> bool:
    return torch.is_autocast_enabled(x.device.type)


class _AutocastT5DenseActDense(t5.T5DenseActDense):
    """``wo(dropout(act(wi(x))))`` without the cast to ``wo``'s dtype under autocast."""

    def forward(self, hidden_states):
        if not _autocasting(hidden_states):
            return super().forward(hidden_states)
        return self.wo(self.dropout(self.act(self.wi(hidden_states))))


class _AutocastT5DenseGatedActDense(t5.T5DenseGatedActDense):
    """``wo(dropout(act(wi_0(x)) * wi_1(x)))`` without the cast to ``wo``'s dtype under autocast."""

    def forward(self, hidden_states):
        if not _autocasting(hidden_states):
            return super().forward(hidden_states)
        gated = self.act(self.wi_0(hidden_states)) * self.wi_1(hidden_states)
        return self.wo(self.dropout(gated))


# Hugging Face's T5 feed-forward class -> the subclass that skips the up-cast under autocast.
T5_FEED_FORWARD: dict[type, type] = {t5.T5DenseActDense: _AutocastT5DenseActDense,
                                     t5.T5DenseGatedActDense: _AutocastT5DenseGatedActDense}
