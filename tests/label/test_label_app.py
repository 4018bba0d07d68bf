"""The HTTP API (FastAPI TestClient): sign-in, next/draft/submit, idempotency, clear errors, headers."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("fastapi", reason="the label extra is not installed: pip install '.[label]'")
from fastapi.testclient import TestClient

from feedback_lm.label.app import create_app
from tests.label.helpers import make_store, rank_label


@pytest.fixture
def setup(db_url, clock):
    """The app over a rank campaign (3 items + one hostile item, overlap 1) on SQLite and PostgreSQL."""
    store = make_store(db_url, clock, n_items=3, mode="rank", overlap=1, likert=True,
                       flags=["harmful", "fails_instruction"], lease_seconds=60)
    store.add_items([{"prompt": "evil", "responses": ["<script>alert(1)</script>", "<img src=x onerror=alert(2)>"]}])
    client = TestClient(create_app(store))
    tokens = {name: store.add_labeler(name) for name in ("ada", "bob")}
    yield store, client, tokens
    store.close()


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_sign_in_is_enforced(setup):
    store, client, tokens = setup
    for method, path in [("GET", "/api/me"), ("POST", "/api/next"), ("PUT", "/api/assignments/1/draft"),
                         ("POST", "/api/assignments/1/label")]:
        for headers in ({}, auth("wrong-token"), {"Authorization": "Basic abc"}):
            r = client.request(method, path, headers=headers, json={})
            assert r.status_code == 401, (method, path, headers)
            assert "sign in" in r.json()["detail"]
    assert client.get("/api/health").json() == {"ok": True, "campaign": "test"}
    assert client.get("/api/me", headers=auth(tokens["ada"])).json()["labeler"] == "ada"
    assert store.counts()["active_leases"] == 0


def test_label_flow_refresh_and_double_submit(setup):
    store, client, tokens = setup
    h = auth(tokens["ada"])
    item = client.post("/api/next", headers=h).json()
    # No stored index, item id or gold mark reaches the page: responses are plain strings in display order.
    assert set(item) == {"assignment_id", "prompt", "responses", "expires_at", "draft", "progress"}
    assert all(isinstance(r, str) for r in item["responses"])
    draft = {"key": "ada-key-0001", "ranks": {"0": 1, "2": 1}, "likert": {"1": 6}, "flags": {}}
    assert client.put(f"/api/assignments/{item['assignment_id']}/draft", headers=h, json=draft).json()["ok"]
    again = client.post("/api/next", headers=h).json()  # a refresh: same item, draft restored
    assert again["assignment_id"] == item["assignment_id"] and again["draft"] == draft
    body = rank_label("ada-key-0001", ranking=[[0, 2], 3, 1])
    url = f"/api/assignments/{item['assignment_id']}/label"
    first, second = client.post(url, headers=h, json=body), client.post(url, headers=h, json=body)
    assert first.status_code == second.status_code == 200
    assert first.json()["label_id"] == second.json()["label_id"] and second.json()["duplicate"]
    assert store.counts()["labels"] == 1
    assert client.post("/api/next", headers=h).json()["prompt"] != item["prompt"]


def test_concurrent_requests_from_threads(setup):
    store, client, tokens = setup
    for i in range(4):
        tokens[f"p{i}"] = store.add_labeler(f"p{i}")
    got = {}

    def ask(name):
        got[name] = client.post("/api/next", headers=auth(tokens[name])).json()

    threads = [threading.Thread(target=ask, args=(n,)) for n in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    items = [g["prompt"] for g in got.values() if not g.get("done")]
    assert len(items) == 4 and len(set(items)) == 4  # overlap 1, 4 items: nobody shares one
    assert sum(bool(g.get("done")) for g in got.values()) == 2

    name, asg = next((n, g) for n, g in got.items() if not g.get("done"))  # whoever got an item
    body = rank_label("racing-key-01", ranking=list(range(len(asg["responses"]))),
                      likert=[4] * len(asg["responses"]), flags=[[]] * len(asg["responses"]))
    results = []
    posts = [threading.Thread(target=lambda: results.append(
        client.post(f"/api/assignments/{asg['assignment_id']}/label", headers=auth(tokens[name]), json=body)))
        for _ in range(5)]
    for t in posts:
        t.start()
    for t in posts:
        t.join()
    assert [r.status_code for r in results] == [200] * 5
    assert len({r.json()["label_id"] for r in results}) == 1 and store.counts()["labels"] == 1


@pytest.mark.parametrize("body, status, message", [
    ({"idempotency_key": "k-0000001", "ranking": [0, 1, 2]}, 422, "every response index"),
    (rank_label("k-0000001", likert=[0, 1, 2, 3]), 422, "1..7"),
    (rank_label("k-0000001", flags=[["spam"], [], [], []]), 422, "unknown flag 'spam'"),
    ({**rank_label("k-0000001"), "best": 0}, 422, 'not "best"'),
    ([1, 2, 3], 422, "a label must be a JSON object"),
    ("not json {", 422, "bad request"),
])
def test_bad_label_rejected_without_change(setup, body, status, message):
    store, client, tokens = setup
    h = auth(tokens["ada"])
    item = client.post("/api/next", headers=h).json()
    url = f"/api/assignments/{item['assignment_id']}/label"
    r = (client.post(url, headers={**h, "Content-Type": "application/json"}, content=body)
         if isinstance(body, str) else client.post(url, headers=h, json=body))
    assert r.status_code == status and message in r.json()["detail"]
    assert store.counts()["labels"] == 0
    assert client.post("/api/next", headers=h).json()["assignment_id"] == item["assignment_id"]


def test_someone_elses_assignment_and_relabel(setup):
    store, client, tokens = setup
    item = client.post("/api/next", headers=auth(tokens["ada"])).json()
    url = f"/api/assignments/{item['assignment_id']}/label"
    r = client.post(url, headers=auth(tokens["bob"]), json=rank_label("bob-key-0001"))
    assert r.status_code == 404 and "no assignment" in r.json()["detail"]
    assert client.post(url, headers=auth(tokens["ada"]), json=rank_label("ada-key-0001")).status_code == 200
    r = client.post(url, headers=auth(tokens["ada"]), json=rank_label("ada-key-0002"))
    assert r.status_code == 409 and "already labeled" in r.json()["detail"]
    assert store.counts()["labels"] == 1


def test_late_label_kept(setup, clock):
    store, client, tokens = setup
    item = client.post("/api/next", headers=auth(tokens["ada"])).json()
    clock.advance(120)
    r = client.put(f"/api/assignments/{item['assignment_id']}/draft", headers=auth(tokens["ada"]), json={})
    assert r.status_code == 409
    r = client.post(f"/api/assignments/{item['assignment_id']}/label", headers=auth(tokens["ada"]),
                    json=rank_label("ada-late-001"))
    assert r.status_code == 200 and r.json()["late"] is True
    assert store.export_labeled()[0].meta["late"] is True


def test_page_and_security_headers(setup):
    _, client, _ = setup
    page = client.get("/")
    assert page.status_code == 200 and "<script src=\"/static/app.js\"" in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    js = client.get("/static/app.js").text
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "fillText(box, text)" in js
    assert page.headers["x-content-type-options"] == "nosniff"
