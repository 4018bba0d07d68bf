"""The rollout fast path: sampling with a static KV cache and one compiled decode step.

``Policy.generate(..., fast=True)`` (``algo.fast_generation=true``) lands here. Plain ``generate`` spends
most of a rollout in Python: per token it re-runs logits processors and stopping criteria and syncs with
the host to ask whether every sequence has finished. This sampler instead

* pads prompts to a length bucket and pre-allocates a static KV cache (``transformers.StaticCache``;
  for T5 one for self-attention and one for cross-attention) that is reset, not rebuilt, between calls;
* runs the prompt once (prefill), then a decode step of FIXED shapes: one token per sequence, positions
  ``cumsum(mask) - 1`` carried on, the full-length attention mask, temperature as a tensor. On CUDA that
  step is compiled with ``mode="reduce-overhead"`` (CUDA graphs), so one token costs a graph replay;
* samples by Gumbel-max (``argmax(logits/τ + Gumbel noise)`` is an exact draw from ``softmax(logits/τ)``)
  on the device, and tracks finished rows on the device; the host looks only every ``check_every`` tokens.

Only pure sampling (``top_k=0, top_p=1``, what PPO's KL needs) and greedy decoding take this path; other
settings fall back to plain ``generate``. Results follow the layout of :class:`feedback_lm.policy.Generation`.
"""

from __future__ import annotations

import inspect

import torch

from feedback_lm import ops


def _bucket(n: int, size: int) -> int:
    return max(size, -(-n // size) * size)


class FastSampler:
    """Static-cache sampler bound to one model. See the module docstring.

    Args:
        model: the HF model (causal LM or T5-style encoder-decoder), not wrapped by FSDP.
        is_encoder_decoder: which family.
        pad_token_id, eos_token_id: the tokenizer's ids.
        compile: compile the decode step (default: on CUDA only; CPU compiles are slow and gain little).
        bucket: prompts are left-padded to a multiple of this length, so few shapes are ever compiled.
        check_every: host checks for "all rows finished" every this many tokens.
    """

    def __init__(self, model, is_encoder_decoder: bool, pad_token_id: int, eos_token_id: int,
                 compile: bool | None = None, bucket: int = 32, check_every: int = 16):
        self.model = model
        self.is_encoder_decoder = is_encoder_decoder
        self.pad_token_id, self.eos_token_id = pad_token_id, eos_token_id
        self.bucket, self.check_every = bucket, check_every
        device = next(model.parameters()).device
        self.compile = device.type == "cuda" if compile is None else compile
        self._caches: dict[tuple, object] = {}
        # transformers renamed `past_key_values` to `cache` (5.2x) and moved `cache_position` into the cache
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._pass_cache_position = "cache_position" in params
        self._step = torch.compile(self._decode_step, mode="reduce-overhead", dynamic=False) if self.compile \
            else self._decode_step

    # ------------------------------------------------------------------------------------------ public
    @torch.no_grad()
    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int,
                 temperature: float = 1.0, greedy: bool = False, stop_at_eos: bool = True,
                 output_logprobs: bool = False):
        """Sample ``max_new_tokens`` (or until every row has emitted EOS). Shapes as ``Policy.generate``."""
        from feedback_lm.policy import Generation

        B, P0 = prompt_ids.shape
        T = max(1, max_new_tokens)
        P = _bucket(P0, self.bucket)
        if P > P0:  # left-pad to the bucket: the real tokens stay a suffix of each row
            pad = P - P0
            prompt_ids = torch.nn.functional.pad(prompt_ids, (pad, 0), value=self.pad_token_id)
            prompt_mask = torch.nn.functional.pad(prompt_mask, (pad, 0), value=False)
        cache = self._cache(B, P, T, prompt_ids.device)
        temp = torch.tensor(1.0 if greedy else float(temperature), device=prompt_ids.device)
        tokens = torch.full((B, T), self.pad_token_id, dtype=torch.long, device=prompt_ids.device)
        logps = torch.zeros((B, T), dtype=torch.float32, device=prompt_ids.device)
        finished = torch.zeros(B, dtype=torch.bool, device=prompt_ids.device)

        if self.is_encoder_decoder:
            enc = self.model.get_encoder()(input_ids=prompt_ids, attention_mask=prompt_mask.long())
            state = {"encoder_hidden": enc.last_hidden_state, "attention_mask": prompt_mask.long()}
            start = self.model.config.decoder_start_token_id
            logits = self._decode_step(torch.full((B, 1), start, device=prompt_ids.device), None,
                                       state["attention_mask"], state["encoder_hidden"], cache,
                                       torch.zeros(1, dtype=torch.long, device=prompt_ids.device))  # eager: fills
            # the cross-attention cache; later steps reuse it
        else:
            full_mask = torch.cat([prompt_mask, prompt_mask.new_ones(B, T)], 1).long()
            positions = (prompt_mask.long().cumsum(-1) - 1).clamp(min=0)
            out = self.model(input_ids=prompt_ids, attention_mask=full_mask, position_ids=positions, use_cache=True,
                             logits_to_keep=1,  # the LM head on the last prompt position only
                             **self._cache_kwargs(cache, torch.arange(P, device=prompt_ids.device)))
            logits = out.logits[:, -1]
            state = {"attention_mask": full_mask, "last_position": positions[:, -1:]}

        offset = 0 if self.is_encoder_decoder else P - 1
        for t in range(T):
            if t > 0:
                if not self.is_encoder_decoder:
                    state["position"] = state["last_position"] + t  # outside the graph: no output reuse
                cache_position = torch.full((1,), offset + t, dtype=torch.long, device=prompt_ids.device)
                logits = self._step(tokens[:, t - 1: t], state.get("position"), state["attention_mask"],
                                    state.get("encoder_hidden"), cache, cache_position)
            token, logp = _draw(logits, temp, greedy)
            if stop_at_eos:
                token = torch.where(finished, torch.full_like(token, self.pad_token_id), token)
                finished |= token == self.eos_token_id
            tokens[:, t], logps[:, t] = token, logp
            if stop_at_eos and (t + 1) % self.check_every == 0 and t + 1 < T and bool(finished.all()):
                tokens, logps = tokens[:, : t + 1], logps[:, : t + 1]
                break
        if stop_at_eos:
            mask = ops.response_mask(tokens, self.eos_token_id)
            tokens = tokens.masked_fill(~mask, self.pad_token_id)
            width = max(1, int(mask.sum(-1).max()))
            tokens, mask, logps = tokens[:, :width], mask[:, :width], logps[:, :width]
        else:
            mask = torch.ones_like(tokens, dtype=torch.bool)
        return Generation(tokens.clone(), mask, (logps * mask).clone() if output_logprobs else None)

    # ----------------------------------------------------------------------------------------- internal
    def _cache(self, B: int, P: int, T: int, device):
        from transformers import EncoderDecoderCache, StaticCache

        key = (B, P, T, str(device))
        cache = self._caches.get(key)
        if cache is None:
            cfg = self.model.config
            if self.is_encoder_decoder:
                cache = EncoderDecoderCache(StaticCache(config=cfg, max_cache_len=T),
                                            StaticCache(config=cfg, max_cache_len=P))
            else:
                cache = StaticCache(config=cfg, max_cache_len=P + T)
            self._caches = {key: cache}  # keep one: a new shape frees the old buffers
        else:
            cache.reset()
            if self.is_encoder_decoder:
                cache.is_updated = dict.fromkeys(cache.is_updated, False)
        return cache

    def _cache_kwargs(self, cache, cache_position: torch.Tensor) -> dict:
        kwargs = {self._cache_kw: cache}
        if self._pass_cache_position:
            kwargs["cache_position"] = cache_position
        return kwargs

    def _decode_step(self, token, position, attention_mask, encoder_hidden, cache, cache_position) -> torch.Tensor:
        """One token per row through the model with the static cache: ``[B,1]`` in, logits ``[B,V]`` out."""
        kwargs = self._cache_kwargs(cache, cache_position)
        if self.is_encoder_decoder:
            out = self.model(encoder_outputs=(encoder_hidden,), attention_mask=attention_mask,
                             decoder_input_ids=token, use_cache=True, **kwargs)
        else:
            out = self.model(input_ids=token, attention_mask=attention_mask, position_ids=position, use_cache=True,
                             **kwargs)
        return out.logits[:, -1]


def _draw(logits: torch.Tensor, temperature: torch.Tensor, greedy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row and its log-prob under ``softmax(logits / τ)`` (fp32)."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    if greedy:
        token = logp.argmax(-1)
    else:  # Gumbel-max: an exact sample from softmax(logp), without a host round trip
        u = torch.rand_like(logp).clamp_(min=1e-20, max=1.0)
        token = (logp - torch.log(-torch.log(u))).argmax(-1)
    return token, logp.gather(-1, token[:, None]).squeeze(-1)
