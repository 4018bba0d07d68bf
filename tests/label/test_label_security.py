"""Security and reliability of the label store and app (issue 18, items 1-5), on SQLite and PostgreSQL.

Campaign-scoped labelers and tokens, no stored index on the page, shuffled gold rows, owner-only
files, revoke / rotate / remove-labeler, strict ``Authorization: Bearer``, no OpenAPI document by
default, the admin token, a stale PostgreSQL connection, and clear CLI messages for damaged files.
"""

from __future__ import annotations

import json
import os
import stat

import pytest

from feedback_lm.errors import UserError
from feedback_lm.label.config import CampaignConfig
from feedback_lm.label.store import Store
from tests.label.helpers import PG_URL, items, make_store, need_service

fastapi = pytest.importorskip("fastapi", reason="the label extra is not installed: pip install '.[label]'")
from fastapi.testclient import TestClient

from feedback_lm.label.app import create_app


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_labelers_and_tokens_belong_to_one_campaign(db_url, clock):
    a = make_store(db_url, clock, n_items=2)
    b = Store.create(a.db, "other", CampaignConfig(), clock)
    b.add_items(items(2))
    token_a = a.add_labeler("ada")
    token_b = b.add_labeler("ada")  # the same name in another campaign of the same database
    assert a.labeler_for_token(token_b) is None and b.labeler_for_token(token_a) is None
    client = TestClient(create_app(a))
    assert client.post("/api/next", headers=auth(token_b)).status_code == 401
    assert a.counts()["active_leases"] == 0
    assert client.post("/api/next", headers=auth(token_a)).status_code == 200
    assert [p["name"] for p in a.labelers()] == ["ada"] and b.counts()["active_leases"] == 0
    a.close()


def test_page_gets_display_positions_only_and_labels_map_back(db_url, clock):
    store = make_store(db_url, clock, n_items=1, mode="rank", likert=True, flags=["harmful"])
    token = store.add_labeler("ada")
    client = TestClient(create_app(store))
    item = client.post("/api/next", headers=auth(token)).json()
    assert "index" not in json.dumps(item) and "item_id" not in item
    (asg,) = [store.next_item(store.labeler_for_token(token)[0])]
    order = asg.display_order
    assert item["responses"] == [asg.responses[i] for i in order]
    body = {"idempotency_key": "ada-shown-01", "ranking": [0, [1, 2], 3], "likert": [7, 6, 5, 4],
            "flags": [[], [], [], ["harmful"]], "comments": [{}, {}, {}, {"harmful": " rude "}]}
    assert client.post(f"/api/assignments/{item['assignment_id']}/label", headers=auth(token), json=body).status_code == 200
    (row,) = store.labeled_rows()
    assert row["tiers"] == [[order[0]], sorted([order[1], order[2]]), [order[3]]]
    assert row["likert"] == [dict(zip(order, [7, 6, 5, 4]))[i] for i in range(4)]
    assert row["flags"][order[3]] == ["harmful"] and row["comments"][order[3]] == {"harmful": "rude"}
    store.close()


def test_display_orders_do_not_follow_from_ids(db_url, clock):
    """Orders were seeded by item and labeler id, so anyone could recompute them; now they are random."""
    store = make_store(db_url, clock, n_items=0, overlap=1)
    store.add_items(items(30, k=4))
    person = store.labeler_for_token(store.add_labeler("ada"))[0]
    orders = set()
    while (asg := store.next_item(person)) is not None:
        orders.add(tuple(asg.display_order))
        store.skip(person, asg.id)
    assert len(orders) > 5  # 30 draws of 24 orders: all alike with probability ~1e-40
    store.close()


def test_gold_rows_are_stored_in_a_random_order(db_url, clock):
    store = make_store(db_url, clock, n_items=0, mode="best")
    store.add_items([{"prompt": f"g{n}", "responses": ["chosen", "rejected"], "gold": [[0], [1]]} for n in range(40)])
    with store.db.transaction(write=False) as cur:
        rows = cur.execute("SELECT responses, gold FROM items").all()
    firsts = {json.loads(r["gold"])[0][0] for r in rows}
    assert firsts == {0, 1}  # chosen is not always at index 0 (all 40 alike: ~1e-12)
    for r in rows:  # the answer follows its response
        assert json.loads(r["responses"])[json.loads(r["gold"])[0][0]] == "chosen"
    store.close()


def test_revoke_rotate_and_remove_labeler(db_url, clock):
    store = make_store(db_url, clock, n_items=3, overlap=1)
    token = store.add_labeler("ada")
    ada = store.labeler_for_token(token)[0]
    store.submit(ada, store.next_item(ada).id, {"idempotency_key": "ada-key-0001", "ranking": [0, 1, 2, 3]})
    held = store.next_item(ada)
    assert store.revoke("ada") == 1
    assert store.labeler_for_token(token) is None and store.counts()["active_leases"] == 0
    assert store.counts()["labels"] == 1  # labels are kept
    other = store.labeler_for_token(store.add_labeler("bob"))[0]
    assert store.next_item(other).item_id == held.item_id  # the released slot is free again
    new = store.rotate("ada")
    assert store.labeler_for_token(new)[1] == "ada" and store.labeler_for_token(token) is None
    assert store.remove_labeler("ada") == 1
    assert store.labeler_for_token(new) is None and store.counts()["labels"] == 0
    store.add_labeler("ada")  # the name is free again
    with pytest.raises(UserError, match="no labeler named 'cy'"):
        store.revoke("cy")
    store.close()


def test_bearer_is_strict_no_openapi_and_admin_token(db_url, clock):
    store = make_store(db_url, clock, n_items=1)
    token = store.add_labeler("ada")
    client = TestClient(create_app(store))
    for header in (token, f"Bearer{token}", f"Basic {token}", f"Bearer {token} extra", f"Token {token}"):
        r = client.get("/api/me", headers={"Authorization": header})
        assert r.status_code == 401, header
    assert client.get("/api/me", headers={"Authorization": f"bearer {token}"}).status_code == 200  # RFC 7235: any case
    assert client.get("/openapi.json").status_code == 404 and client.get("/docs").status_code == 404
    assert TestClient(create_app(store, openapi=True)).get("/openapi.json").status_code == 200

    assert client.get("/api/admin/stats", headers=auth(token)).status_code == 401  # a labeler is not the admin
    admin = store.admin_token()
    report = client.get("/api/admin/stats", headers=auth(admin)).json()
    assert report["people"][0]["name"] == "ada" and report["campaign"]["items"] == 1
    assert store.admin_token() != admin and client.get("/api/admin/stats", headers=auth(admin)).status_code == 401
    store.close()


def test_files_are_created_owner_only(tmp_path, capsys):
    from feedback_lm.data.comparisons import Comparison, write_comparisons
    from feedback_lm.label.__main__ import main
    from feedback_lm.label.store import open_campaign

    os.umask(0o022)
    src = tmp_path / "items.jsonl"
    write_comparisons(src, [Comparison(it["prompt"], it["responses"], [[0], [1, 2, 3]]) for it in items(2)])
    main(["create", str(tmp_path / "c"), "--items", str(src)])
    main(["add-labeler", str(tmp_path / "c"), "ada"])
    store = open_campaign(tmp_path / "c")
    ada = store.labeler_for_token(capsys.readouterr().out.strip().splitlines()[-1])[0]
    store.submit(ada, store.next_item(ada).id, {"idempotency_key": "ada-key-0001", "ranking": [1, 0, 2, 3]})
    main(["export", str(tmp_path / "c"), "--out", str(tmp_path / "labels.jsonl")])
    main(["stats", str(tmp_path / "c"), "--json", str(tmp_path / "stats.json")])
    for name in ("c/labels.sqlite", "c/labels.sqlite-wal", "c/campaign.json", "labels.jsonl", "stats.json"):
        assert mode_of(tmp_path / name) == 0o600, name
    store.close()


def test_old_schema_gets_one_message(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE labelers (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, "
                     "token_hash TEXT NOT NULL UNIQUE, created_at DOUBLE PRECISION NOT NULL)")
    with pytest.raises(UserError, match="older feedback_lm"):
        Store(str(path), "x")


def test_stale_postgres_connection_is_replaced(clock):
    """A server restart drops every connection; the next request must still answer (it was a plain 500)."""
    need_service(bool(PG_URL), "no PostgreSQL server: run `eval $(.ci/start_postgres.sh)`")
    import psycopg

    from tests.label.helpers import reset_postgres

    def restart_drops_connections():
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND pid <> pg_backend_pid()")

    reset_postgres(PG_URL)
    store = make_store(PG_URL, clock, n_items=2)
    token = store.add_labeler("ada")
    ada = store.labeler_for_token(token)[0]
    for call in (store.counts, lambda: store.next_item(ada)):  # this thread's connection: a read, a write
        restart_drops_connections()
        assert call()
    client = TestClient(create_app(store))  # the app's worker threads
    assert client.get("/api/me", headers=auth(token)).status_code == 200
    for method, path in (("GET", "/api/me"), ("POST", "/api/next")):
        restart_drops_connections()
        r = client.request(method, path, headers=auth(token))
        assert r.status_code == 200, r.text
    store.close()


def test_database_outage_is_a_json_503(db_url, clock, monkeypatch):
    import sqlite3

    store = make_store(db_url, clock, n_items=1)
    token = store.add_labeler("ada")
    client = TestClient(create_app(store), raise_server_exceptions=False)

    def down(*args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(store, "next_item", down)
    r = client.post("/api/next", headers=auth(token))
    assert r.status_code == 503 and "try again" in r.json()["detail"] and r.headers["retry-after"] == "2"
    store.close()


def fail(capsys, *argv: str) -> str:
    from feedback_lm.label.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_cli_names_a_corrupt_store_or_campaign_file(tmp_path, capsys):
    from tests.label.helpers import make_campaign

    make_campaign(tmp_path / "c", items(1))
    (tmp_path / "c" / "labels.sqlite").write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (tmp_path / "c" / f"labels.sqlite{suffix}").unlink(missing_ok=True)
    err = fail(capsys, "stats", str(tmp_path / "c"))
    assert "labels.sqlite is not a readable SQLite label store" in err and "Traceback" not in err

    make_campaign(tmp_path / "d", items(1))
    (tmp_path / "d" / "campaign.json").write_text("{not json")
    err = fail(capsys, "stats", str(tmp_path / "d"))
    assert "campaign.json is corrupt" in err and "--difficulty" not in err
    (tmp_path / "d" / "campaign.json").write_bytes(b"\xff\xfe\x00")
    assert "campaign.json is corrupt" in fail(capsys, "add-labeler", str(tmp_path / "d"), "ada")
    assert "--difficulty is not valid JSON" in fail(capsys, "create", str(tmp_path / "e"), "--model", "tiny-gpt2",
                                                    "--task", "word_sorting", "--difficulty", "{bad")


def test_gold_items_must_have_as_many_responses_as_the_others(tmp_path, capsys):
    from feedback_lm.data.comparisons import Comparison, write_comparisons

    src, gold = tmp_path / "items.jsonl", tmp_path / "gold.jsonl"
    write_comparisons(src, [Comparison(it["prompt"], it["responses"], [[0], [1, 2, 3]]) for it in items(2)])
    gold.write_text(json.dumps({"prompt": "g", "chosen": "a", "rejected": "b"}) + "\n")
    err = fail(capsys, "create", str(tmp_path / "c"), "--items", str(src), "--gold", str(gold))
    assert "row 1 has 2 responses but the items have [4]" in err
    assert not (tmp_path / "c" / "campaign.json").exists()


def test_token_commands(tmp_path, capsys):
    from feedback_lm.label.__main__ import main
    from feedback_lm.label.store import open_campaign
    from tests.label.helpers import make_campaign

    make_campaign(tmp_path / "c", items(1))
    last_line = lambda: capsys.readouterr().out.strip().splitlines()[-1]
    main(["add-labeler", str(tmp_path / "c"), "ada"])
    first = last_line()
    main(["rotate", str(tmp_path / "c"), "ada"])
    second = last_line()
    store = open_campaign(tmp_path / "c")
    assert store.labeler_for_token(first) is None and store.labeler_for_token(second)[1] == "ada"
    main(["revoke", str(tmp_path / "c"), "ada"])
    assert "revoked ada's token" in capsys.readouterr().out and store.labeler_for_token(second) is None
    main(["remove-labeler", str(tmp_path / "c"), "ada"])
    assert "removed ada and their 0 label(s)" in capsys.readouterr().out and store.labelers() == []
    main(["admin-token", str(tmp_path / "c")])
    assert store.is_admin(last_line())
    assert "no labeler named 'bob'" in fail(capsys, "revoke", str(tmp_path / "c"), "bob")
    store.close()
