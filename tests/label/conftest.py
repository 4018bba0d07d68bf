"""Fixtures for the labeling app: stores on SQLite and (when a server is given) PostgreSQL, a fake clock.

Services: PostgreSQL tests read ``FEEDBACK_LM_TEST_PG_URL`` (``.ci/start_postgres.sh`` starts a
server and prints it); browser tests need ``/usr/bin/chromium`` and ``/usr/bin/chromedriver``.
Without them those tests skip with the reason, unless ``FEEDBACK_LM_REQUIRE_SERVICES=1`` (set by
``.ci/run``), which turns the skip into a failure so that CI cannot pass without running them.
"""

from __future__ import annotations

import pytest

from tests.label.helpers import PG_URL, FakeClock, make_store, need_service, reset_postgres


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path) -> str:
    """A fresh, empty database of each kind."""
    if request.param == "postgres":
        need_service(bool(PG_URL), "no PostgreSQL server: run `eval $(.ci/start_postgres.sh)` to start one "
                                   "and export FEEDBACK_LM_TEST_PG_URL")
        reset_postgres(PG_URL)
        return PG_URL
    return str(tmp_path / "labels.sqlite")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(db_url, clock):
    """A rank-mode campaign with 3 items, overlap 2, Likert and two flags, on each database kind."""
    s = make_store(db_url, clock, n_items=3, mode="rank", overlap=2, likert=True,
                   flags=["harmful", "fails_instruction"], lease_seconds=60)
    yield s
    s.close()
