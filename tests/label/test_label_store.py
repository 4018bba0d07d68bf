"""Store rules (issue 7 §4-§6) on SQLite and PostgreSQL: leases, overlap, idempotency, late labels, export."""

from __future__ import annotations

import json
import sqlite3
import threading

import pytest

from feedback_lm.data.comparisons import load_comparisons
from feedback_lm.errors import UserError
from feedback_lm.label.config import CampaignConfig, LabelError
from feedback_lm.label.store import Conflict, NotFound, Store
from tests.label.helpers import items, make_store, rank_label


def people(store: Store, n: int) -> list[int]:
    return [store.labeler_for_token(store.add_labeler(f"person{i}"))[0] for i in range(n)]


def test_token_is_hashed_and_signs_in(store, db_url):
    token = store.add_labeler("ada")
    assert store.labeler_for_token(token)[1] == "ada"
    assert store.labeler_for_token(token + "x") is None and store.labeler_for_token("") is None
    with store.db.transaction(write=False) as cur:
        stored = [r["token_hash"] for r in cur.execute("SELECT token_hash FROM labelers").all()]
    assert token not in stored and len(stored[0]) == 64
    with pytest.raises(UserError, match="exists already"):
        store.add_labeler("ada")


def test_refresh_returns_same_item_with_draft(store):
    (a,) = people(store, 1)
    first = store.next_item(a)
    store.save_draft(a, first.id, {"ranks": {"2": 1}, "likert": {"0": 5}})
    again = store.next_item(a)
    assert (again.id, again.item_id) == (first.id, first.item_id)
    assert again.draft == {"ranks": {"2": 1}, "likert": {"0": 5}}
    assert sorted(again.display_order) == [0, 1, 2, 3] and again.display_order == first.display_order


def test_overlap_gives_distinct_people_and_never_the_same_item_twice(store):
    a, b, c = people(store, 3)
    got = {}
    for person in (a, b, c):
        got[person] = store.next_item(person).item_id
    assert got[a] == got[b] == 1 and got[c] == 2  # overlap 2: item 1 to two people, the third gets item 2
    for person in (a, b, c):
        store.submit(person, store.next_item(person).id, rank_label(f"key-{person}-first"))
    labeled = {}
    for person in (a, b, c):
        while (asg := store.next_item(person)) is not None:
            labeled.setdefault(asg.item_id, []).append(person)
            store.submit(person, asg.id, rank_label(f"key-{person}-{asg.item_id}-x"))
    rows = store.labeled_rows()
    per_item = {}
    for r in rows:
        per_item.setdefault(r["item_id"], []).append(r["labeler"])
    assert sorted(per_item) == [1, 2, 3]
    for names in per_item.values():
        assert len(names) == 2 and len(set(names)) == 2  # two different people per item
    assert store.counts()["items_complete"] == 3


def test_leases_expire_and_come_back(store, clock):
    a, b, c = people(store, 3)
    held = store.next_item(a)
    assert store.next_item(b).item_id == held.item_id  # second slot of item 1
    assert store.next_item(c).item_id == 2             # item 1 is full while both leases live
    store.submit(c, store.next_item(c).id, rank_label("c-item-2"))
    clock.advance(61)  # a's and b's leases run out (60 s)
    assert store.next_item(c).item_id == 1             # item 1's slots are back
    assert store.counts()["active_leases"] == 1


def test_draft_renews_lease(store, clock):
    a, b, c = people(store, 3)
    held = store.next_item(a)
    b_held = store.next_item(b)
    clock.advance(50)
    store.save_draft(a, held.id, {"x": 1})
    clock.advance(50)  # 100 s after leasing, 50 s after the draft: a's lease still lives, b's ran out
    assert store.next_item(c).item_id == 1  # b's slot came back
    with pytest.raises(Conflict, match="is expired"):
        store.save_draft(b, b_held.id, {"x": 1})
    assert store.next_item(a).id == held.id


def test_late_label_is_kept_and_marked(store, clock):
    a, b, c = people(store, 3)
    asg = store.next_item(a)
    store.next_item(b)
    clock.advance(61)
    taker = store.next_item(c)  # takes a's old slot on item 1
    assert taker.item_id == asg.item_id
    result = store.submit(a, asg.id, rank_label("late-key-a"))
    assert result.late and not result.duplicate
    store.submit(c, taker.id, rank_label("key-c-0001"))
    rows = {r["labeler"]: r for r in store.labeled_rows()}
    assert rows["person0"]["late"] and rows["person0"]["slot"] is None  # extra label, no slot
    assert not rows["person2"]["late"] and rows["person2"]["slot"] is not None
    exported = store.export_labeled()
    assert [c.meta["late"] for c in exported] == [True, False]


def test_double_submit_stores_one_label(store):
    (a,) = people(store, 1)
    asg = store.next_item(a)
    first = store.submit(a, asg.id, rank_label("same-key-123"))
    second = store.submit(a, asg.id, rank_label("same-key-123"))
    assert second.duplicate and second.label_id == first.label_id
    with pytest.raises(Conflict, match="already labeled"):
        store.submit(a, asg.id, rank_label("other-key-456"))
    assert store.counts()["labels"] == 1


def test_concurrent_double_submit_from_threads(store):
    (a,) = people(store, 1)
    asg = store.next_item(a)
    results, errors = [], []

    def post():
        try:
            results.append(store.submit(a, asg.id, rank_label("racing-key-1")))
        except Exception as e:  # noqa: BLE001 - the assertion below reports it
            errors.append(e)

    threads = [threading.Thread(target=post) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({r.label_id for r in results}) == 1 and sum(not r.duplicate for r in results) == 1
    assert store.counts()["labels"] == 1


def test_no_double_assignment_under_concurrent_requests(db_url, clock):
    store = make_store(db_url, clock, n_items=4, overlap=2)
    ids = people(store, 8)
    got, errors = {}, []

    def ask(person):
        try:
            asg = store.next_item(person)
            got[person] = None if asg is None else asg.item_id
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(p,)) for p in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with store.db.transaction(write=False) as cur:
        rows = cur.execute("SELECT item_id, slot, labeler_id FROM assignments WHERE state = 'active'").all()
    slots = [(r["item_id"], r["slot"]) for r in rows]
    assert len(slots) == 8 and len(set(slots)) == 8  # 4 items x 2 slots, each held once
    assert sorted(got.values()) == [1, 1, 2, 2, 3, 3, 4, 4]
    store.close()


def test_bad_labels_rejected_with_clear_message_and_no_change(store):
    (a,) = people(store, 1)
    asg = store.next_item(a)
    bad = [
        (rank_label("k-1234567", ranking=[0, 1, 2]), "every response index 0..3"),
        (rank_label("k-1234567", ranking=[0, 1, 1, 2]), "every response index"),
        (rank_label("k-1234567", likert=[4, 2, 9, 4]), "1..7"),
        (rank_label("k-1234567", flags=[[], ["rude"], [], []]), "unknown flag 'rude'"),
        ({**rank_label("k-1234567"), "best": 1}, 'not "best"'),
        ({**rank_label("k-1234567"), "extra": 1}, "unknown field"),
        (rank_label("short"), "idempotency_key"),
    ]
    for payload, message in bad:
        with pytest.raises(LabelError, match=message):
            store.submit(a, asg.id, payload)
    assert store.counts()["labels"] == 0
    assert store.next_item(a).id == asg.id  # still the person's live lease
    with pytest.raises(NotFound):
        store.submit(a, asg.id + 99, rank_label("k-1234567"))


def test_someone_elses_assignment_is_not_found(store):
    a, b = people(store, 2)
    asg = store.next_item(a)
    with pytest.raises(NotFound, match="no assignment"):
        store.submit(b, asg.id, rank_label("k-b-123456"))
    with pytest.raises(NotFound):
        store.save_draft(b, asg.id, {})


def test_gold_items_go_to_everyone(db_url, clock):
    store = make_store(db_url, clock, n_items=0, overlap=1, mode="best")
    store.add_items([{**items(1)[0], "gold": [[1], [0, 2, 3]]}])
    store.add_items(items(1))
    a, b = people(store, 2)
    assert store.next_item(a).gold and store.next_item(b).gold  # the gold item has no overlap cap
    with pytest.raises(UserError, match="gold answer"):
        store.add_items([{**items(1)[0], "gold": [[0, 1, 2, 3]]}])
    store.close()


def test_export_round_trips_with_ties_and_meta(store, tmp_path):
    a, b = people(store, 2)
    store.submit(a, store.next_item(a).id, rank_label("key-a-0001", ranking=[[1, 2], 0, 3]))
    store.submit(b, store.next_item(b).id, rank_label("key-b-0001", ranking=[[0, 1, 2, 3]]))  # all tied: skipped
    path = tmp_path / "export.jsonl"
    exported = store.export_labeled(path)
    assert len(exported) == 1
    (row,) = load_comparisons(path)
    assert row.tiers == [[1, 2], [0], [3]]
    assert json.loads(path.read_text())["ranking"] == [[1, 2], 0, 3]  # ties as nested lists
    assert (1, 2) not in row.pairs() and (2, 1) not in row.pairs() and (1, 0) in row.pairs()
    meta = row.meta
    assert meta["labeler"] == "person0" and meta["likert"] == [4, 2, 7, 4]
    assert meta["flags"] == [[], ["harmful"], [], []] and sorted(meta["display_order"]) == [0, 1, 2, 3]
    assert meta["policy"] == "tiny-gpt2" and meta["sampling"] == {"temperature": 1.0} and meta["seed"] == 0
    assert meta["seconds"] >= 0 and meta["late"] is False and meta["campaign"] == "test"


def test_enqueue_and_export_labeled_for_online_training(db_url, clock):
    store = make_store(db_url, clock, n_items=0, mode="best")
    item = store.enqueue("Q: 2+2\nA:", ["4", "5"], {"policy": "ppo-step-10", "seed": 3})
    (a,) = people(store, 1)
    asg = store.next_item(a)
    assert asg.item_id == item and asg.responses == ["4", "5"]
    store.submit(a, asg.id, {"idempotency_key": "online-0001", "best": 0})
    (c,) = store.export_labeled()
    assert (c.best, c.tiers, c.meta["policy"]) == (0, [[0], [1]], "ppo-step-10")
    store.close()


def test_bad_items_and_config_rejected():
    with pytest.raises(UserError, match="overlap"):
        CampaignConfig(overlap=0)
    with pytest.raises(UserError, match="mode"):
        CampaignConfig(mode="pairs")
    with pytest.raises(UserError, match="flag names"):
        CampaignConfig(flags=["Bad Flag"])


def test_bad_item_rejected_and_nothing_added(store):
    before = store.counts()["items"]
    with pytest.raises(UserError, match="at least 2 strings"):
        store.add_items([items(1)[0], {"prompt": "p", "responses": ["only one"]}])
    assert store.counts()["items"] == before


def test_sqlite_is_wal_with_full_sync(tmp_path):
    store = make_store(str(tmp_path / "x.sqlite"))
    conn = store.db.connection()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    store.close()
    with sqlite3.connect(tmp_path / "x.sqlite") as raw:
        assert raw.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 3
