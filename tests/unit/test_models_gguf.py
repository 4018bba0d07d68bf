"""GGUF checkpoints: the one-time conversion cache (atomic, reused, keyed by content), where it lives, and
the messages a user gets when the package or the file is missing. The real SmolLM2 file is exercised in
tests/integration/test_smollm2.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from feedback_lm import models
from feedback_lm.errors import UserError
from feedback_lm.models import ModelConfig, convert_gguf, gguf_cache_root, pretrained_source


@pytest.fixture
def gguf(tmp_path) -> Path:
    path = tmp_path / "src" / "tiny.Q4_1.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF fake content")
    return path


@pytest.fixture
def writes(monkeypatch) -> list[Path]:
    """Replace the (slow, transformers-based) writer with one that records its calls and writes two files."""
    calls: list[Path] = []

    def fake_write(src: Path, out: Path) -> None:
        calls.append(out)
        (out / "model.safetensors").write_text("weights")
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_write_hf_copy", fake_write)
    return calls


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "gguf").iterdir() if p.name.startswith("."))


def test_conversion_is_written_once_and_reused(gguf, tmp_path, writes):
    root = tmp_path / "cache"
    first = convert_gguf(gguf, root)
    assert first.parent == root / "gguf" and first.name.startswith("tiny.Q4_1-")
    assert (first / "config.json").is_file() and (first / "model.safetensors").read_text() == "weights"
    assert convert_gguf(gguf, root) == first
    assert len(writes) == 1, "the second load reuses the converted directory"
    assert writes[0] != first, "written into a temporary directory, then renamed into place"
    assert leftovers(root) == []


def test_changed_file_gets_a_new_copy(gguf, tmp_path, writes):
    root = tmp_path / "cache"
    first = convert_gguf(gguf, root)
    gguf.write_bytes(b"GGUF other content")
    second = convert_gguf(gguf, root)
    assert second != first and len(writes) == 2


def test_interrupted_conversion_leaves_nothing_behind(gguf, tmp_path, monkeypatch):
    def dies_midway(src: Path, out: Path) -> None:
        (out / "model.safetensors").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_write_hf_copy", dies_midway)
    root = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        convert_gguf(gguf, root)
    assert list((root / "gguf").iterdir()) == [], "no half-written model and no temporary directory"


def test_a_concurrent_conversion_that_finished_first_is_kept(gguf, tmp_path, monkeypatch):
    root = tmp_path / "cache"
    target: list[Path] = []

    def other_process_wins(src: Path, out: Path) -> None:
        (out / "config.json").write_text("mine")
        final = out.parent / out.name[1:].rsplit(".", 1)[0]  # ".<name>.<random>" -> "<name>"
        final.mkdir()
        (final / "config.json").write_text("theirs")
        target.append(final)

    monkeypatch.setattr(models, "_write_hf_copy", other_process_wins)
    got = convert_gguf(gguf, root)
    assert got == target[0] and (got / "config.json").read_text() == "theirs"
    assert leftovers(root) == []


def test_cache_root_from_option_then_environment_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("FEEDBACK_LM_CACHE", str(tmp_path / "env"))
    assert gguf_cache_root(str(tmp_path / "opt")) == tmp_path / "opt"
    assert gguf_cache_root() == tmp_path / "env"
    monkeypatch.delenv("FEEDBACK_LM_CACHE")
    assert gguf_cache_root() == Path("~/.cache/feedback_lm").expanduser()


def test_gguf_file_inside_name_or_path_and_absolute(gguf, tmp_path, writes):
    by_dir = ModelConfig.coerce({"name_or_path": str(gguf.parent), "gguf_file": gguf.name,
                                 "cache_dir": str(tmp_path / "c")})
    absolute = ModelConfig.coerce({"gguf_file": str(gguf), "cache_dir": str(tmp_path / "c")})
    assert pretrained_source(by_dir) == pretrained_source(absolute)
    assert len(writes) == 1


def test_missing_package_says_what_to_install():
    cfg = ModelConfig.coerce({"gguf_file": "x.gguf", "gguf_package": "feedback_lm_no_such_package"})
    with pytest.raises(UserError, match=r'pip install -e "\.\[models\]"') as err:
        pretrained_source(cfg)
    assert "model.gguf_package=feedback_lm_no_such_package" in str(err.value)
    assert "feedback-lm-no-such-package" in str(err.value), "names the PyPI package"


def test_missing_file_names_the_option(tmp_path):
    cfg = ModelConfig.coerce({"name_or_path": str(tmp_path), "gguf_file": "absent.gguf"})
    with pytest.raises(UserError, match="model.gguf_file=absent.gguf: no such file"):
        pretrained_source(cfg)


def test_a_plain_model_is_read_from_name_or_path():
    assert pretrained_source(ModelConfig.coerce({"name_or_path": "openai-community/gpt2"})) == "openai-community/gpt2"


def test_a_saved_directory_wins_over_the_gguf_file(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    cfg = ModelConfig.coerce({"name_or_path": str(tmp_path), "gguf_file": "absent.gguf", "gguf_package": "nope"})
    assert pretrained_source(cfg) == str(tmp_path)


def test_lora_adapter_directory_loads_merged(tmp_path):
    """A LoRA run's save_pretrained writes only the adapter; model.name_or_path=<that dir> loads base +
    adapter, merged, with the same logits."""
    import torch

    from feedback_lm.policy import Policy

    base = Policy.from_config({"name": "t", "preset": "tiny-gpt2", "tokenizer": "byte"})
    base.model.save_pretrained(tmp_path / "base")
    base.tokenizer.save_pretrained(tmp_path / "base")
    tuned = Policy.from_config({"name": "t", "name_or_path": str(tmp_path / "base"), "lora": {"r": 4}})
    with torch.no_grad():
        for name, p in tuned.model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.01)  # a non-zero adapter
    tuned.model.save_pretrained(tmp_path / "run")
    tuned.tokenizer.save_pretrained(tmp_path / "run")
    assert not (tmp_path / "run" / "config.json").exists(), "peft saved only the adapter"
    again = Policy.from_config({"name": "t", "name_or_path": str(tmp_path / "run")})
    enc = tuned.encode_batch(["Q: ab\nA:"], [" ba"])
    with torch.no_grad():
        want, got, plain = tuned(**enc).logits, again(**enc).logits, base(**enc).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert not torch.allclose(got, plain, atol=1e-3), "the adapter is applied"
