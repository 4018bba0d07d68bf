"""Without a reachable hub, a hub name loads from the local cache, or fails at once with a clear error
(huggingface_hub's own retries take ~45 s before the same error)."""
import socket
import subprocess
import sys
import textwrap

import pytest

from feedback_lm import models


@pytest.fixture
def endpoint(monkeypatch):
    """Point the hub endpoint somewhere; returns the setter. The probe's per-process cache is cleared."""
    from huggingface_hub import constants

    for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def point(url: str) -> None:
        monkeypatch.setattr(constants, "ENDPOINT", url)
        models.hub_reachable.cache_clear()

    yield point
    models.hub_reachable.cache_clear()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket closes


def test_probe_sees_a_listening_endpoint_and_a_closed_one(endpoint):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        endpoint(f"http://127.0.0.1:{server.getsockname()[1]}")
        assert models.hub_reachable()
        assert models.offline_if_unreachable("acme/model") == {}
    endpoint(f"http://127.0.0.1:{_closed_port()}")
    assert not models.hub_reachable()
    assert models.offline_if_unreachable("acme/model") == {"local_files_only": True}
    assert models.offline_if_unreachable("./runs/x/model") == {}  # a directory is never looked up online


def test_hf_hub_offline_needs_no_probe(endpoint, monkeypatch):
    from huggingface_hub import constants

    endpoint(f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # HF_HUB_OFFLINE=1: the client is offline itself
    monkeypatch.setattr(models.socket, "create_connection", lambda *a, **k: pytest.fail("probed the hub"))
    assert models.offline_if_unreachable("acme/model") == {}


def test_a_proxy_leaves_the_judgement_to_huggingface_hub(endpoint, monkeypatch):
    endpoint(f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert models.hub_reachable()


@pytest.mark.slow
def test_cached_hub_model_loads_and_a_missing_one_fails_clearly_when_offline(tmp_path):
    """A fresh interpreter (huggingface_hub reads HF_HOME and HF_ENDPOINT at import): a model saved in the
    hub cache's layout under a hub name loads with the hub unreachable; a name not in the cache is a UserError
    that says the hub cannot be reached."""
    from tests.conftest import tiny_policy

    snapshot = tmp_path / "hf" / "hub" / "models--acme--tiny-gpt2" / "snapshots" / "abc123"
    policy = tiny_policy("tiny-gpt2")
    policy.model.save_pretrained(snapshot)
    policy.tokenizer.save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    script = textwrap.dedent("""
        from feedback_lm.errors import UserError
        from feedback_lm.models import ModelConfig, load_model, load_tokenizer
        cfg = ModelConfig(name_or_path="acme/tiny-gpt2")
        tok = load_tokenizer(cfg)
        model = load_model(cfg, tok)
        print("loaded", type(model).__name__)
        try:
            load_tokenizer(ModelConfig(name_or_path="acme/not-cached"))
        except UserError as e:
            print("error:", e)
    """)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}",
           "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert "loaded GPT2LMHeadModel" in proc.stdout
    assert ("error: could not load the tokenizer 'acme/not-cached' (the Hugging Face hub cannot be reached "
            "from here and it is not in the local cache)") in proc.stdout
