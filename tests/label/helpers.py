"""Helpers shared by the labeling tests (services, fake clock, sample items and labels)."""

from __future__ import annotations

import os

import pytest

from feedback_lm.label.config import CampaignConfig
from feedback_lm.label.store import Store

PG_URL = os.environ.get("FEEDBACK_LM_TEST_PG_URL")
REQUIRE_SERVICES = os.environ.get("FEEDBACK_LM_REQUIRE_SERVICES") == "1"


def need_service(available: bool, reason: str) -> None:
    """Skip (locally) or fail (CI, ``FEEDBACK_LM_REQUIRE_SERVICES=1``) when a service is missing."""
    if available:
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"FEEDBACK_LM_REQUIRE_SERVICES=1 but {reason}")
    pytest.skip(reason)


class FakeClock:
    """A settable clock for lease expiry."""

    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def reset_postgres(url: str) -> None:
    """Drop the label tables so each test starts from an empty database."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS labels, assignments, items, labelers, campaigns CASCADE")


def items(n: int, k: int = 4) -> list[dict]:
    """``n`` distinct items of ``k`` responses with provenance meta."""
    return [{"prompt": f"Q: sort words {i}\nA:", "responses": [f"answer {i}.{j}" for j in range(k)],
             "meta": {"policy": "tiny-gpt2", "sampling": {"temperature": 1.0}, "seed": 0, "index": i}}
            for i in range(n)]


def make_store(url: str, clock=None, n_items: int = 3, **config) -> Store:
    kwargs = {"clock": clock} if clock is not None else {}
    store = Store.create(url, "test", CampaignConfig(**config), **kwargs)
    store.add_items(items(n_items))
    return store


def rank_label(key: str, ranking=None, likert=None, flags=None) -> dict:
    return {"idempotency_key": key, "ranking": ranking if ranking is not None else [2, [0, 3], 1],
            "likert": likert if likert is not None else [4, 2, 7, 4],
            "flags": flags if flags is not None else [[], ["harmful"], [], []]}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m feedback_lm.label serve DIR`` in a subprocess on a free port (a real uvicorn)."""

    def __init__(self, campaign_dir, port: int | None = None):
        self.dir, self.port = str(campaign_dir), port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self, timeout: float = 60.0) -> Server:
        import subprocess
        import sys
        import tempfile
        import time

        import httpx

        # A file, not a pipe: a full pipe would block the server. Closed in kill()/stop().
        self.log = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "feedback_lm.label", "serve", self.dir, "--port",
                                      str(self.port), "--log-level", "warning"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"server exited: {self.log.read().decode(errors='replace')}")
            try:
                if httpx.get(self.url + "/api/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not answer on {self.url} within {timeout} s")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler, no flush; what was acknowledged must already be on disk."""
        self.proc.kill()
        self.proc.wait(timeout=30)
        self.log.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except Exception:  # noqa: BLE001 - it must not outlive the test
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc is not None and not self.log.closed:
            self.log.close()


def make_campaign(directory, item_list: list[dict], db: str | None = None, **config) -> None:
    """A campaign directory named ``demo`` over ``item_list`` in its own SQLite file, or in ``db``."""
    import json
    from pathlib import Path

    from feedback_lm.label.store import CAMPAIGN_FILE, SQLITE_FILE

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    store = Store.create(db or str(directory / SQLITE_FILE), "demo", CampaignConfig(**config))
    store.add_items(item_list)
    store.close()
    (directory / CAMPAIGN_FILE).write_text(json.dumps({"name": "demo", "db": db}))
