"""The policy adapter: the ONLY place that knows causal vs encoder-decoder.

Every algorithm talks to a language model through :class:`Policy` with one data layout (docs/architecture.md §4):
prompts LEFT-padded ``[B,P]``, responses RIGHT-padded ``[B,R]`` and cut after the first EOS. The
adapter turns that into the right forward pass (docs/algorithms.md §0.3):

* **causal**: ``z = [prompt; response]`` with ``position_ids = cumsum(mask) - 1`` so that left padding
  does not shift positions; ``logits[:, P-1+t]`` predicts ``y_t``.
* **encoder-decoder**: the prompt goes to the encoder, ``decoder_input_ids = shift_right(response)``
  with the decoder start token; ``logits[:, t]`` predicts ``y_t`` with no manual shift.

Either way :meth:`Policy.forward` returns logits ``[B,R,V]`` aligned with the response tokens, and
(on request) the hidden state *before* each response token ``[B,R,d]`` for value heads, plus the
hidden state that has read the whole sequence ``[B,d]`` for reward heads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import (LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper,
                          TopPLogitsWarper)
from transformers.modeling_outputs import BaseModelOutput

from feedback_lm import ops
from feedback_lm.errors import UserError
from feedback_lm.models import ModelConfig, load_model, load_tokenizer
from feedback_lm.precision import cached_weight_casts


@dataclass
class PolicyOutput:
    """Output of :meth:`Policy.forward`.

    Attributes:
        logits: ``[B,R,V]``; ``logits[:, t]`` predicts ``response_ids[:, t]``; None when the caller asked
            for hidden states only (a decoder-only model then skips the LM head).
        hidden: ``[B,R,d]`` state before emitting ``y_t`` (value heads, docs/algorithms.md §0.3), or None.
        last_hidden: ``[B,d]`` state at the last real response token (reward heads, docs/algorithms.md §2.0), or None.
    """

    logits: torch.Tensor | None
    hidden: torch.Tensor | None = None
    last_hidden: torch.Tensor | None = None


@dataclass
class Generation:
    """Responses sampled by :meth:`Policy.generate`.

    Attributes:
        response_ids: ``[B,R]`` right-padded with pad id, cut after the first EOS.
        response_mask: ``[B,R]`` bool, True up to and including the first EOS.
        logprobs: ``[B,R]`` fp32 log-probs of the sampled tokens under the *processed* sampling
            distribution (temperature applied), 0 on padding; None unless requested.
    """

    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor | None = None


class Policy(nn.Module):
    """A Hugging Face LM (optionally LoRA-wrapped) plus its tokenizer, behind one interface.

    Args:
        model: an HF model with an LM head (``AutoModelForCausalLM`` / ``AutoModelForSeq2SeqLM``).
        tokenizer: its tokenizer.
        max_length: prompts are cut to their last ``max_length`` tokens, responses to their first.
        chat_template: wrap each prompt as one user turn of the tokenizer's chat template, followed by the
            assistant header, before tokenizing (``model.chat_template``; docs/real_model.md).
    """

    def __init__(self, model: nn.Module, tokenizer, max_length: int = 512, chat_template: bool = False):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        if chat_template and not getattr(tokenizer, "chat_template", None):
            raise UserError("model.chat_template=true, but this model's tokenizer has no chat template; "
                            "set model.chat_template=false to feed prompts raw")
        self.chat_template = chat_template
        self.is_encoder_decoder = bool(model.config.is_encoder_decoder)
        self.pad_token_id = int(model.config.pad_token_id)
        self.eos_token_id = int(tokenizer.eos_token_id)
        self._forward_accepts_logits_to_keep = not self.is_encoder_decoder
        self._byte_offset = _byte_offset(tokenizer)
        self.fsdp_root: nn.Module | None = None  # see set_fsdp_root

    @classmethod
    def from_config(cls, cfg: ModelConfig | dict) -> Policy:
        cfg = ModelConfig.coerce(cfg)
        tokenizer = load_tokenizer(cfg)
        model = load_model(cfg, tokenizer)
        policy = cls(model, tokenizer, max_length=cfg.max_length, chat_template=cfg.chat_template)
        if cfg.compile:
            policy.model.forward = torch.compile(policy.model.forward)
        return policy

    def set_fsdp_root(self, root: nn.Module | None) -> None:
        """Tell the policy the strategy's outermost FSDP unit (``trainer.strategy.model``) so that
        generation can gather full parameters. Stored outside ``nn.Module`` registration on purpose:
        the root contains this policy, registering it would make a cycle."""
        object.__setattr__(self, "fsdp_root", root)

    @property
    def hidden_size(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "d_model", None) or getattr(cfg, "n_embd", None) or cfg.hidden_size)

    # ----------------------------------------------------------------------------------- tokenizing
    def encode_prompts(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize prompts, LEFT-padded. T5 encoders get their EOS; causal prompts get none. With
        ``chat_template`` each text first becomes ``user`` turn + assistant header, so the response is the
        assistant's turn (which ends with the EOS the response encoding appends).

        Returns:
            ids ``[B,P]`` long and mask ``[B,P]`` bool.
        """
        if self.chat_template:
            texts = [self.tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                                        add_generation_prompt=True) for t in texts]
        eos = [self.eos_token_id] if self.is_encoder_decoder else []
        enc = [ids[-(self.max_length - len(eos)):] + eos for ids in self._tokenize(texts)]
        return pad_sequences(enc, self.pad_token_id, side="left")

    @property
    def prompt_suffix_tokens(self) -> int:
        """How many tokens :meth:`encode_prompts` appends after the prompt's own text and header (T5: the
        encoder EOS); text meant to continue the prompt goes before them."""
        return 1 if self.is_encoder_decoder else 0

    def encode_responses(self, texts: Sequence[str], add_eos: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize responses (targets), RIGHT-padded, with EOS appended (docs/algorithms.md §1.2: the model must
        learn to stop). Prompt and response are tokenized separately (docs/algorithms.md §1.5).

        Returns:
            ids ``[B,R]`` long and mask ``[B,R]`` bool.
        """
        eos = [self.eos_token_id] if add_eos else []
        enc = self._tokenize(texts)
        enc = [ids[: self.max_length - len(eos)] + eos for ids in enc]
        return pad_sequences(enc, self.pad_token_id, side="right")

    def _tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        if self._byte_offset is not None:  # ByT5: id = utf-8 byte + 3; 30x faster than the generic path
            off = self._byte_offset
            return [[b + off for b in t.encode("utf-8")] for t in texts]
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def encode_batch(self, prompts: Sequence[str], responses: Sequence[str], device=None) -> dict:
        """Prompt and response texts -> the four tensors every forward pass takes, on ``device``."""
        prompt_ids, prompt_mask = self.encode_prompts(prompts)
        response_ids, response_mask = self.encode_responses(responses)
        out = dict(prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids,
                   response_mask=response_mask)
        return {k: v.to(device) for k, v in out.items()} if device is not None else out

    def decode(self, response_ids: torch.Tensor, response_mask: torch.Tensor | None = None) -> list[str]:
        """Response ids ``[B,R]`` -> texts, without special tokens or padding. Ids the tokenizer does not
        know are dropped: embedding matrices are often padded past the vocabulary (T5: 32128 rows for 32100
        tokens) and a sampling policy can draw those rows."""
        rows = response_ids.tolist()
        if response_mask is not None:
            rows = [r[: int(n)] for r, n in zip(rows, response_mask.sum(-1).tolist())]
        known = len(self.tokenizer)
        rows = [[t for t in r if 0 <= t < known] for r in rows]
        return self.tokenizer.batch_decode(rows, skip_special_tokens=True)

    # -------------------------------------------------------------------------------------- forward
    def decoder_input_ids(self, response_ids: torch.Tensor) -> torch.Tensor:
        """``shift_right(response_ids)`` with the decoder start token (docs/algorithms.md §0.3)."""
        start = self.model.config.decoder_start_token_id
        first = torch.full_like(response_ids[:, :1], start)
        return torch.cat([first, response_ids[:, :-1]], dim=1)

    def forward(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                response_mask: torch.Tensor, output_hidden: bool = False, hidden_only: bool = False) -> PolicyOutput:
        """Logits (and hidden states) aligned with the response tokens.

        Args:
            prompt_ids: ``[B,P]`` left-padded. prompt_mask: ``[B,P]`` bool.
            response_ids: ``[B,R]`` right-padded. response_mask: ``[B,R]`` bool.
            output_hidden: also return ``hidden [B,R,d]`` and ``last_hidden [B,d]``.
            hidden_only: the hidden states without the logits (reward and value heads): a decoder-only
                model computes its LM head at one position instead of ``R + 1`` (``V`` = 49,152 columns on
                SmolLM2); ``logits`` is then None.
        """
        output_hidden = output_hidden or hidden_only
        R = response_ids.shape[1]
        last = ops.last_index(response_mask)  # [B]
        if self.is_encoder_decoder:
            with _same_attention_kernel_with_and_without_grad(prompt_ids.device):
                out = self.model(input_ids=prompt_ids, attention_mask=prompt_mask.long(),
                                 decoder_input_ids=self.decoder_input_ids(response_ids),
                                 output_hidden_states=output_hidden, use_cache=False)
            logits = None if hidden_only else out.logits
            if not output_hidden:
                return PolicyOutput(logits)
            hidden = out.decoder_hidden_states[-1]
            # T5's decoder state at t has read y_<t; the state at the EOS position has read the whole
            # response and is the one a reward head reads (docs/algorithms.md §2.0, [PROJECT] for enc-dec).
            return PolicyOutput(logits, hidden, hidden[torch.arange(len(last)), last])

        P = prompt_ids.shape[1]
        input_ids = torch.cat([prompt_ids, response_ids], dim=1)
        attention = torch.cat([prompt_mask, response_mask], dim=1).long()
        position_ids = (attention.cumsum(-1) - 1).clamp(min=0)  # docs/algorithms.md §0.3: left padding
        kwargs = {"logits_to_keep": 1 if hidden_only else R + 1} if self._forward_accepts_logits_to_keep else {}
        out = self.model(input_ids=input_ids, attention_mask=attention, position_ids=position_ids,
                         output_hidden_states=output_hidden, use_cache=False, **kwargs)
        logits = None if hidden_only else out.logits[:, -(R + 1):-1]  # position P-1+t predicts y_t
        if not output_hidden:
            return PolicyOutput(logits)
        full = out.hidden_states[-1]
        hidden = full[:, P - 1:-1]
        last_hidden = full[torch.arange(len(last)), P + last]  # has read every real token
        return PolicyOutput(logits, hidden, last_hidden)

    def logprobs(self, prompt_ids, prompt_mask, response_ids, response_mask, temperature: float = 1.0):
        """Per-token fp32 log-probs ``[B,R]`` of the response under ``softmax(logits / temperature)``,
        0 on padding."""
        logits = self(prompt_ids, prompt_mask, response_ids, response_mask).logits
        return ops.gather_logprobs(logits, response_ids, temperature) * response_mask

    # ----------------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int = 32,
                 do_sample: bool = True, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 num_return_sequences: int = 1, output_logprobs: bool = False,
                 stop_at_eos: bool = True, fast: bool = False) -> Generation:
        """Sample (or greedy-decode) responses.

        Args:
            prompt_ids: ``[B,P]`` left-padded; prompt_mask ``[B,P]``.
            do_sample: False = greedy (temperature, top_k, top_p ignored).
            num_return_sequences: responses per prompt; rows come out prompt-major
                (``prompt_ids.repeat_interleave(n, 0)`` lines up with them).
            output_logprobs: also return the log-probs of the sampled tokens under the sampling
                distribution (what the forward pass at the same temperature must reproduce, docs/algorithms.md §3.9 #9).
            stop_at_eos: False samples exactly ``max_new_tokens`` tokens, EOS or not (LHP's fixed-length
                rollouts, docs/algorithms.md §3.2); the mask is then all True and nothing is cut.
            fast: the rollout fast path (:mod:`feedback_lm.sampling`: static KV cache, compiled decode step
                on CUDA) for pure sampling or greedy decoding; other settings use plain ``generate``.

        Returns:
            :class:`Generation` with ``[B*n, R]`` tensors, ``R <= max_new_tokens``.
        """
        if not do_sample:
            temperature, top_k, top_p = 1.0, 0, 1.0
        if fast and top_k == 0 and top_p >= 1.0 and self.fsdp_root is None:
            # no cached casts here: its CUDA-graph decode step must not hold a cast that is freed on exit
            return self._fast_generate(prompt_ids, prompt_mask, max_new_tokens, temperature, not do_sample,
                                       num_return_sequences, output_logprobs, stop_at_eos)
        n = num_return_sequences
        sampler = _InverseCdfSampler(temperature, top_k, top_p, record=output_logprobs) if do_sample else None
        gen_kwargs = dict(
            attention_mask=prompt_mask.long(), max_new_tokens=max_new_tokens,
            pad_token_id=self.pad_token_id, eos_token_id=self.eos_token_id if stop_at_eos else None,
            return_dict_in_generate=True, output_scores=output_logprobs and sampler is None,
            # HF's argmax over the sampler's output is the draw: do_sample=False
            do_sample=False, logits_processor=LogitsProcessorList([sampler] if sampler else []),
        )
        was_training = self.model.training
        self.model.eval()  # no dropout while sampling (docs/algorithms.md §0.5)
        try:
            # one bf16 cast per weight, not one per token; frozen weights too, except under FSDP (flat parameters)
            frozen_too = self.model if self.fsdp_root is None else None
            with _full_params_for_generation(self.model, self.fsdp_root) as synced, \
                    cached_weight_casts(prompt_ids.device, frozen_too):
                if n > 1:  # rows prompt-major; HF's greedy mode takes one sequence per row
                    gen_kwargs["attention_mask"] = gen_kwargs["attention_mask"].repeat_interleave(n, 0)
                    if self.is_encoder_decoder:  # the encoder once per prompt, as HF's own sampling does
                        enc = self.model.get_encoder()(input_ids=prompt_ids, attention_mask=prompt_mask.long())
                        gen_kwargs["encoder_outputs"] = BaseModelOutput(
                            last_hidden_state=enc.last_hidden_state.repeat_interleave(n, 0))
                    prompt_ids = prompt_ids.repeat_interleave(n, 0)
                out = self.model.generate(input_ids=prompt_ids, **gen_kwargs, synced_gpus=synced)
        finally:
            self.model.train(was_training)
        seq = out.sequences
        new = seq[:, 1:] if self.is_encoder_decoder else seq[:, prompt_ids.shape[1]:]
        if new.shape[1] == 0:  # max_new_tokens=0: keep shapes valid
            new = torch.full_like(seq[:, :1], self.eos_token_id)
        if stop_at_eos:
            mask = ops.response_mask(new, self.eos_token_id)
            new = new.masked_fill(~mask, self.pad_token_id)
        else:
            mask = torch.ones_like(new, dtype=torch.bool)
        logprobs = None
        if output_logprobs:
            if sampler is not None:  # the draws' log-probs, recorded by the sampler
                logprobs = torch.stack(sampler.logprobs, dim=1)[:, : new.shape[1]] if sampler.logprobs \
                    else torch.zeros(new.shape, dtype=torch.float32, device=new.device)
                logprobs = logprobs * mask
            else:
                scores = torch.stack(out.scores, dim=1)[:, : new.shape[1]].float()  # [B,R,V] greedy logits
                logprobs = ops.gather_logprobs(scores, new) * mask
        return Generation(new, mask, logprobs)

    def _fast_generate(self, prompt_ids, prompt_mask, max_new_tokens, temperature, greedy, n, output_logprobs,
                       stop_at_eos) -> Generation:
        from feedback_lm.sampling import FastSampler

        if getattr(self, "_fast_sampler", None) is None:
            object.__setattr__(self, "_fast_sampler", FastSampler(self.model, self.is_encoder_decoder,
                                                                  self.pad_token_id, self.eos_token_id))
        if n > 1:
            prompt_ids, prompt_mask = prompt_ids.repeat_interleave(n, 0), prompt_mask.repeat_interleave(n, 0)
        was_training = self.model.training
        self.model.eval()
        try:
            return self._fast_sampler.generate(prompt_ids, prompt_mask, max_new_tokens, temperature, greedy,
                                               stop_at_eos, output_logprobs)
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def generate_text(self, prompts: Sequence[str], **kwargs) -> list[str]:
        """Convenience: prompt texts in, response texts out (on the model's device)."""
        device = next(self.model.parameters()).device
        ids, mask = self.encode_prompts(prompts)
        gen = self.generate(ids.to(device), mask.to(device), **kwargs)
        return self.decode(gen.response_ids, gen.response_mask)


def _byte_offset(tokenizer) -> int | None:
    """The id offset of a ByT5-style byte tokenizer (ids = bytes + offset), or None for other tokenizers."""
    from transformers import ByT5Tokenizer

    return getattr(tokenizer, "offset", None) if isinstance(tokenizer, ByT5Tokenizer) else None


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad lists of token ids into ``(ids [B,L] long, mask [B,L] bool)``; ``side`` is "left" or "right"."""
    width = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), max(width, 1)), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), max(width, 1)), dtype=torch.bool)
    for i, s in enumerate(seqs):
        if not s:
            continue
        sl = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[i, sl] = torch.as_tensor(s, dtype=torch.long)
        mask[i, sl] = True
    return ids, mask


def _same_attention_kernel_with_and_without_grad(device: torch.device):
    """T5's trainable relative-position bias enters attention as a float mask. On the CPU, SDPA runs its
    flash kernel when that mask needs no gradient (``no_grad`` rollout passes) and its math kernel when
    it does (the update), and under bf16 the two differ by up to 0.07 nats per token: PPO's ratio would
    not start at 1. The math kernel on both sides makes them agree (docs/speed.md). It matters for T5 models
    on ``sdpa`` (the library's default, e.g. FLAN-T5); the tiny presets use ``eager`` attention."""
    if device.type != "cpu":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


@contextlib.contextmanager
def _full_params_for_generation(model: nn.Module, root: nn.Module | None = None):
    """Generation under FSDP needs full parameters and every rank stepping together (docs/architecture.md §5.6).

    ``root`` is the strategy's outermost FSDP unit when it wraps more than ``model`` (Lightning's
    FSDPStrategy wraps the LightningModule; plugins set ``Policy.fsdp_root`` from the trainer). Yields
    the ``synced_gpus`` flag for ``generate``: True under FSDP with several ranks, so that a rank whose
    sequences finished early keeps running forward passes until every rank is done.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    target = root if isinstance(root, FSDP) else next((m for m in model.modules() if isinstance(m, FSDP)), None)
    if target is None:
        yield False
        return
    import torch.distributed as dist

    with FSDP.summon_full_params(target, writeback=False, recurse=True):
        yield dist.is_initialized() and dist.get_world_size() > 1


class _InverseCdfSampler(LogitsProcessor):
    """The last logits processor of sampled generation: Hugging Face's temperature, top-k and top-p
    warpers (in the order of its own sampling mode), then one draw per row with
    :func:`feedback_lm.ops.sample_categorical`, returned as ``+inf`` at the drawn token so that
    ``generate``'s greedy argmax takes it. The same distribution as ``do_sample=True``, without
    ``torch.multinomial``'s exponential variate per vocabulary entry (docs/speed.md, "Sampling").

    With ``record=True`` it keeps the log-prob of each draw under the warped distribution (fp32), as
    ``output_scores`` would give it.
    """

    def __init__(self, temperature: float, top_k: int, top_p: float, record: bool = False):
        self.warpers = LogitsProcessorList()
        if temperature != 1.0:
            self.warpers.append(TemperatureLogitsWarper(temperature))
        if top_k:
            self.warpers.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))
        self.logprobs: list[torch.Tensor] | None = [] if record else None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = self.warpers(input_ids, scores.float())
        token = ops.sample_categorical(scores)[:, None]
        if self.logprobs is not None:
            self.logprobs.append(ops.gather_logprobs(scores[:, None], token)[:, 0])
        return scores.scatter(-1, token, float("inf"))
