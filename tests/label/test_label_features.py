"""Store rules of the labeler features (issue 18, items 6-9) on SQLite and PostgreSQL: progress, skip,
edit of one's last label until export, flag comments."""

from __future__ import annotations

import pytest

from feedback_lm.label.config import LabelError
from feedback_lm.label.store import Conflict
from tests.label.helpers import rank_label


def person(store, name: str) -> int:
    return store.labeler_for_token(store.add_labeler(name))[0]


def test_progress_counts_done_and_what_is_left(store):
    a, b = person(store, "ada"), person(store, "bob")
    assert store.progress(a) == {"done": 0, "assigned": 3, "skipped": 0, "items": 3, "items_complete": 0}
    store.submit(a, store.next_item(a).id, rank_label("ada-key-0001"))
    store.submit(b, store.next_item(b).id, rank_label("bob-key-0001"))
    assert store.progress(a) == {"done": 1, "assigned": 3, "skipped": 0, "items": 3, "items_complete": 1}
    store.skip(a, store.next_item(a).id)
    assert store.progress(a)["skipped"] == 1 and store.progress(a)["assigned"] == 2


def test_skip_releases_the_slot_at_once_and_is_exported(store):
    a, b, c = person(store, "ada"), person(store, "bob"), person(store, "cy")
    held_a, held_b = store.next_item(a), store.next_item(b)
    assert store.next_item(c).item_id == 2  # item 1's two slots are taken
    store.skip(a, held_a.id)  # no lease timeout: c could have item 1 now; a never gets it again
    assert store.next_item(a).item_id == 2
    with pytest.raises(Conflict, match="skipped"):
        store.submit(a, held_a.id, rank_label("ada-late-001"))
    store.submit(b, held_b.id, rank_label("bob-key-0001"))
    (row,) = store.export_labeled()
    assert row.meta["skipped_by"] == ["ada"] and store.counts()["skips"] == 1
    with pytest.raises(Conflict, match="labeled already"):
        store.skip(b, held_b.id)


def test_edit_last_label_until_exported(store):
    a = person(store, "ada")
    first = store.next_item(a)
    store.submit(a, first.id, rank_label("ada-key-0001"))
    second = store.next_item(a)
    store.submit(a, second.id, rank_label("ada-key-0002"))
    with pytest.raises(Conflict, match="most recent"):
        store.edit(a, first.id, rank_label("ada-edit-001", ranking=[0, 1, 2, 3]))
    last = store.last_label(a)
    assert last.id == second.id and last.label["ranking"] == [2, [0, 3], 1]
    store.edit(a, second.id, rank_label("ada-edit-002", ranking=[0, 1, 2, 3], flags=[[], [], [], []]))
    with pytest.raises(LabelError, match="every response index"):
        store.edit(a, second.id, rank_label("ada-edit-003", ranking=[0, 1]))
    rows = {r["item_id"]: r for r in store.labeled_rows()}
    assert rows[second.item_id]["tiers"] == [[0], [1], [2], [3]] and rows[second.item_id]["edited_at"] is not None
    assert rows[first.item_id]["edited_at"] is None
    store.export_labeled()
    assert store.last_label(a) is None
    with pytest.raises(Conflict, match="exported"):
        store.edit(a, second.id, rank_label("ada-edit-004"))


def test_last_label_in_display_positions(store):
    a = person(store, "ada")
    asg = store.next_item(a)
    order = asg.display_order
    shown = {"idempotency_key": "ada-shown-01", "ranking": [3, [0, 1], 2], "likert": [1, 2, 3, 4],
             "flags": [["harmful"], [], [], []], "comments": [{"harmful": "x"}, {}, {}, {}]}
    store.submit(a, asg.id, shown, shown=True)
    label = store.last_label(a, shown=True).label
    assert label == {"ranking": [3, [0, 1], 2], "best": None, "likert": [1, 2, 3, 4],
                     "flags": [["harmful"], [], [], []], "comments": [{"harmful": "x"}, {}, {}, {}]}
    stored = store.last_label(a).label
    assert stored["flags"][order[0]] == ["harmful"] and stored["likert"][order[3]] == 4


def test_flag_comments_are_checked_and_exported(store):
    a = person(store, "ada")
    asg = store.next_item(a)
    with pytest.raises(LabelError, match="not set on it"):
        store.submit(a, asg.id, {**rank_label("ada-key-0001"), "comments": [{"harmful": "no"}, {}, {}, {}]})
    with pytest.raises(LabelError, match="at most 2000"):
        store.submit(a, asg.id, {**rank_label("ada-key-0001"), "comments": [{}, {"harmful": "x" * 2001}, {}, {}]})
    store.submit(a, asg.id, {**rank_label("ada-key-0001"), "comments": [{}, {"harmful": " insults "}, {}, {}]})
    (row,) = store.export_labeled()
    assert row.meta["comments"] == [{}, {"harmful": "insults"}, {}, {}]
