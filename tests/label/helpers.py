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
