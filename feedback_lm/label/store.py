"""The label store: items, labelers, leases and labels of one campaign, in SQLite or PostgreSQL.

Assignment rules (issue 7 §4), each enforced in a serialized transaction and backed by a unique index
(see :mod:`feedback_lm.label.db`):

* An item has ``overlap`` *slots*; a lease holds one slot for ``lease_seconds``. Two people never
  hold the same slot, and one person never gets a second slot of an item they hold or labeled.
  Gold items have no slots: every labeler gets each gold item once.
* A lease that runs out is marked expired the next time anyone asks for work, and its slot returns
  to the pool. Saving a draft renews the lease.
* :meth:`Store.next_item` gives a person their current lease back if they hold one (a page refresh
  gets the same item, with the saved draft), else the lowest-numbered item with a free slot.
* :meth:`Store.submit` stores exactly one label per idempotency key: a retried or double-clicked
  submit returns the first label. A label whose lease had expired is kept with ``late=True``; if its
  slot was taken meanwhile it keeps no slot (the item then simply has one extra label).
* :meth:`Store.skip` gives an item back at once (its slot returns to the pool; the person never gets
  it again); the export lists who skipped an item in ``meta["skipped_by"]``.
* :meth:`Store.edit` replaces a person's most recent label until it is exported.

Labelers, their tokens and the admin token belong to one campaign; only SHA-256 hashes are stored.
Each person sees an item's responses in their own random order; the page only ever gets display
positions, and the store maps them back (``shown=True``). Gold items are stored with their responses
shuffled, so a gold row written as chosen/rejected does not keep its answer at index 0.

Online use from a training loop (issue 7 §6), e.g. a PPO callback::

    store = Store.open(url_or_campaign_dir)
    store.enqueue(prompt, responses, meta={"policy": "step-1200", "sampling": {...}, "seed": 3})
    ...
    comparisons = store.export_labeled()          # everything labeled so far, as Comparison objects
    store.export_labeled("labels.jsonl")          # or written as the JSONL that algo=reward_model reads
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from feedback_lm.data.comparisons import Comparison, write_comparisons
from feedback_lm.errors import UserError
from feedback_lm.label.config import CampaignConfig, LabelError, ValidLabel, tiers_to_ranking, validate_label
from feedback_lm.label.db import Database

__all__ = ["Assignment", "Conflict", "NotFound", "Store", "SubmitResult", "check_items", "hash_token",
           "open_campaign"]

CAMPAIGN_FILE = "campaign.json"
SQLITE_FILE = "labels.sqlite"
MAX_DRAFT_CHARS = 20_000
_shuffle = random.SystemRandom().shuffle  # display orders and gold rows: not predictable from ids


class NotFound(UserError):
    """The assignment or item does not exist or belongs to someone else (HTTP 404)."""


class Conflict(UserError):
    """The request clashes with what is stored, e.g. a second label for one item (HTTP 409)."""


@dataclass
class Assignment:
    """One person's lease on one item, as the labeling page shows it."""

    id: int
    item_id: int
    prompt: str
    responses: list[str]
    display_order: list[int]
    expires_at: float
    draft: dict | None
    gold: bool
    label: dict | None = None  # the stored label in display positions (:meth:`Store.last_label`)


@dataclass
class SubmitResult:
    """What :meth:`Store.submit` stored (or had already stored, ``duplicate=True``)."""

    label_id: int
    duplicate: bool
    late: bool


def hash_token(token: str) -> str:
    """SHA-256 of a sign-in token; only this is stored (tokens are 192 random bits, so no salt/KDF)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Store:
    """One campaign in a label database.

    Args:
        db: the database (see :class:`Database`); the schema is created if missing.
        campaign: the campaign's name.
        clock: returns the time in Unix seconds (tests pass a fake one to expire leases).

    Raises:
        UserError: no campaign of that name in the database.
    """

    def __init__(self, db: Database | str, campaign: str, clock: Callable[[], float] = time.time):
        self.db = db if isinstance(db, Database) else Database(db)
        self.clock = clock
        self.db.create_schema()
        with self.db.transaction(write=False) as cur:
            row = cur.execute("SELECT id, config FROM campaigns WHERE name = ?", (campaign,)).one()
        if row is None:
            raise UserError(f"no campaign named {campaign!r} in {self.db!r}; create it with "
                            f"python -m feedback_lm.label create")
        self.name, self.campaign_id = campaign, row["id"]
        self.config = CampaignConfig.from_dict(json.loads(row["config"]))

    # ---------------------------------------------------------------------------- set up
    @classmethod
    def create(cls, db: Database | str, campaign: str, config: CampaignConfig,
               clock: Callable[[], float] = time.time) -> Store:
        """Add a new campaign to the database and return its store.

        Raises:
            UserError: a campaign of that name exists already.
        """
        db = db if isinstance(db, Database) else Database(db)
        db.create_schema()
        with db.transaction() as cur:
            if cur.execute("SELECT 1 FROM campaigns WHERE name = ?", (campaign,)).one():
                raise UserError(f"a campaign named {campaign!r} exists already in {db!r}; pick another --name")
            cur.execute("INSERT INTO campaigns (name, config, created_at) VALUES (?, ?, ?)",
                        (campaign, json.dumps(config.to_dict()), clock()))
        return cls(db, campaign, clock)

    @classmethod
    def open(cls, campaign_dir: str | os.PathLike, db: str | None = None,
             clock: Callable[[], float] = time.time) -> Store:
        """The store of a campaign directory (made by ``create``); ``db`` overrides its database URL."""
        return open_campaign(campaign_dir, db, clock)

    def close(self) -> None:
        self.db.close()

    def add_labeler(self, name: str) -> str:
        """Register a person in this campaign and return their sign-in token. Only its hash is stored:
        show it once.

        Raises:
            UserError: the name is empty or taken in this campaign.
        """
        if not isinstance(name, str) or not name.strip() or len(name) > 100:
            raise UserError(f"a labeler name must be 1-100 characters, got {name!r}")
        token = secrets.token_urlsafe(24)
        with self.db.transaction() as cur:
            if cur.execute("SELECT 1 FROM labelers WHERE campaign_id = ? AND name = ?",
                           (self.campaign_id, name)).one():
                raise UserError(f"a labeler named {name!r} exists already in campaign {self.name!r}; pick another "
                                f"name (or `rotate` to give {name} a new token)")
            cur.execute("INSERT INTO labelers (campaign_id, name, token_hash, active, created_at) "
                        "VALUES (?, ?, ?, 1, ?)", (self.campaign_id, name, hash_token(token), self.clock()))
        return token

    def labeler_for_token(self, token: str) -> tuple[int, str] | None:
        """``(id, name)`` of this campaign's active labeler with this token, or None."""
        if not token:
            return None
        with self.db.transaction(write=False) as cur:
            row = cur.execute("SELECT id, name FROM labelers WHERE token_hash = ? AND campaign_id = ? AND active = 1",
                              (hash_token(token), self.campaign_id)).one()
        return (row["id"], row["name"]) if row else None

    def revoke(self, name: str) -> int:
        """Stop a person's token from signing in and give their leases back; their labels stay.
        Returns the number of leases released."""
        with self.db.transaction() as cur:
            labeler_id = self._labeler_id(cur, name)
            cur.execute("UPDATE labelers SET active = 0 WHERE id = ?", (labeler_id,))
            return self._release(cur, labeler_id)

    def rotate(self, name: str) -> str:
        """A new token for a person (the old one stops working; a revoked person is active again)."""
        token = secrets.token_urlsafe(24)
        with self.db.transaction() as cur:
            cur.execute("UPDATE labelers SET token_hash = ?, active = 1 WHERE id = ?",
                        (hash_token(token), self._labeler_id(cur, name)))
        return token

    def remove_labeler(self, name: str) -> int:
        """Delete a person with their leases and labels (the name can be used again). Returns the number
        of labels deleted."""
        with self.db.transaction() as cur:
            labeler_id = self._labeler_id(cur, name)
            n = cur.execute("SELECT COUNT(*) AS n FROM labels WHERE labeler_id = ?", (labeler_id,)).one()["n"]
            for table in ("labels", "assignments"):
                cur.execute(f"DELETE FROM {table} WHERE labeler_id = ?", (labeler_id,))
            cur.execute("DELETE FROM labelers WHERE id = ?", (labeler_id,))
        return n

    def admin_token(self) -> str:
        """A new admin token for the researcher's page (replaces the previous one; only its hash is kept)."""
        token = secrets.token_urlsafe(24)
        with self.db.transaction() as cur:
            cur.execute("UPDATE campaigns SET admin_token_hash = ? WHERE id = ?", (hash_token(token), self.campaign_id))
        return token

    def is_admin(self, token: str) -> bool:
        if not token:
            return False
        with self.db.transaction(write=False) as cur:
            return cur.execute("SELECT 1 FROM campaigns WHERE id = ? AND admin_token_hash = ?",
                               (self.campaign_id, hash_token(token))).one() is not None

    def add_items(self, items: Iterable[dict], source: str = "campaign") -> list[int]:
        """Add items ``{"prompt", "responses", "meta"?, "gold"?}``; ``gold`` is the known ranking as tiers.

        Raises:
            UserError: an item has a non-string prompt, fewer than 2 responses, or a gold ranking that is
                not a partition of its response indices into >= 2 tiers.
        """
        items = [_shuffle_gold(it) for it in check_items(items)]
        rows = [(it["prompt"], json.dumps(it["responses"]), json.dumps(it.get("meta") or {}),
                 None if it.get("gold") is None else json.dumps(it["gold"])) for it in items]
        now, ids = self.clock(), []
        with self.db.transaction() as cur:
            for prompt, responses, meta, gold in rows:
                ids.append(cur.execute(
                    "INSERT INTO items (campaign_id, prompt, responses, meta, gold, source, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (self.campaign_id, prompt, responses, meta, gold, source, now)).one()["id"])
        return ids

    def enqueue(self, prompt: str, responses: list[str], meta: dict | None = None) -> int:
        """Queue one new item for labeling while training runs (online mode); returns its id.

        ``meta`` should record where the responses came from (policy checkpoint or step, sampling
        settings, seed): it is copied into every exported row's ``meta``.
        """
        return self.add_items([{"prompt": prompt, "responses": list(responses), "meta": dict(meta or {})}],
                              source="online")[0]

    # ---------------------------------------------------------------------------- labeling
    def next_item(self, labeler_id: int) -> Assignment | None:
        """The person's current lease, else a new lease on the next free slot; None when nothing is left."""
        now = self.clock()
        with self.db.transaction() as cur:
            self._expire(cur, now)
            row = cur.execute(
                "SELECT a.id FROM assignments a JOIN items i ON i.id = a.item_id "
                "WHERE a.labeler_id = ? AND a.state = 'active' AND i.campaign_id = ? ORDER BY a.id LIMIT 1",
                (labeler_id, self.campaign_id)).one()
            if row is not None:
                return self._assignment(cur, row["id"])
            item = cur.execute(
                "SELECT i.id, i.gold, i.responses FROM items i WHERE i.campaign_id = ? "
                "AND NOT EXISTS (SELECT 1 FROM assignments a WHERE a.item_id = i.id AND a.labeler_id = ? "
                "                AND a.state <> 'expired') "
                "AND (i.gold IS NOT NULL OR (SELECT COUNT(*) FROM assignments a WHERE a.item_id = i.id "
                "     AND a.state <> 'expired' AND a.slot IS NOT NULL) < ?) "
                "ORDER BY i.id LIMIT 1",
                (self.campaign_id, labeler_id, self.config.overlap)).one()
            if item is None:
                return None
            slot = None
            if item["gold"] is None:
                taken = {r["slot"] for r in cur.execute(
                    "SELECT slot FROM assignments WHERE item_id = ? AND state <> 'expired' AND slot IS NOT NULL",
                    (item["id"],)).all()}
                slot = min(set(range(self.config.overlap)) - taken)
            expires = now + self.config.lease_seconds
            old = cur.execute("SELECT id FROM assignments WHERE item_id = ? AND labeler_id = ?",
                              (item["id"], labeler_id)).one()
            if old is not None:  # their own expired lease on this item: renew it, draft included
                cur.execute("UPDATE assignments SET state = 'active', slot = ?, leased_at = ?, expires_at = ? "
                            "WHERE id = ?", (slot, now, expires, old["id"]))
                assignment_id = old["id"]
            else:
                order = list(range(len(json.loads(item["responses"]))))
                _shuffle(order)  # per person and item (position bias); the page never sees stored indices
                assignment_id = cur.execute(
                    "INSERT INTO assignments (item_id, labeler_id, slot, state, leased_at, expires_at, "
                    "display_order) VALUES (?, ?, ?, 'active', ?, ?, ?) RETURNING id",
                    (item["id"], labeler_id, slot, now, expires, json.dumps(order))).one()["id"]
            return self._assignment(cur, assignment_id)

    def save_draft(self, labeler_id: int, assignment_id: int, draft: dict) -> float:
        """Store the unsaved choice of an active lease (restored on refresh) and renew the lease.

        Returns:
            The new expiry time.

        Raises:
            LabelError: the draft is not a JSON object or is too large.
            NotFound: no such assignment of this person. Conflict: the lease is no longer active.
        """
        if not isinstance(draft, dict):
            raise LabelError("a draft must be a JSON object")
        text = json.dumps(draft)
        if len(text) > MAX_DRAFT_CHARS:
            raise LabelError(f"a draft may have at most {MAX_DRAFT_CHARS} characters of JSON, got {len(text)}")
        now = self.clock()
        with self.db.transaction() as cur:
            self._expire(cur, now)
            row = self._own(cur, labeler_id, assignment_id)
            if row["state"] != "active":
                raise Conflict(f"assignment {assignment_id} is {row['state']}, so its draft cannot change; "
                               f"submit it (a late label is kept) or ask for the next item")
            expires = now + self.config.lease_seconds
            cur.execute("UPDATE assignments SET draft = ?, expires_at = ? WHERE id = ?", (text, expires, assignment_id))
        return expires

    def submit(self, labeler_id: int, assignment_id: int, payload: dict, shown: bool = False) -> SubmitResult:
        """Store one label (checked by :func:`~feedback_lm.label.config.validate_label`); ``shown=True``:
        its indices are display positions (the web page), else stored indices.

        Raises:
            LabelError: bad label (nothing is stored). NotFound: not this person's assignment.
            Conflict: the person already labeled this item under another idempotency key, or the key
                was used for another item.
        """
        now = self.clock()
        with self.db.transaction() as cur:
            key = payload.get("idempotency_key") if isinstance(payload, dict) else None
            if isinstance(key, str):
                seen = cur.execute("SELECT id, assignment_id, late FROM labels WHERE labeler_id = ? "
                                   "AND idempotency_key = ?", (labeler_id, key)).one()
                if seen is not None:
                    if seen["assignment_id"] != assignment_id:
                        raise Conflict(f"idempotency_key {key!r} was already used for assignment "
                                       f"{seen['assignment_id']}; use a new key for each assignment")
                    return SubmitResult(seen["id"], duplicate=True, late=bool(seen["late"]))
            row = self._own(cur, labeler_id, assignment_id)
            if row["state"] == "done":
                raise Conflict(f"you already labeled item {row['item_id']} (assignment {assignment_id}); "
                               f"one label per person and item")
            if row["state"] == "skipped":
                raise Conflict(f"you skipped item {row['item_id']} (assignment {assignment_id}); ask for the next item")
            label = self._validate(row, payload, shown)
            late = row["state"] == "expired" or now > row["expires_at"]
            slot = row["slot"]
            if late and slot is not None and cur.execute(
                    "SELECT 1 FROM assignments WHERE item_id = ? AND slot = ? AND state <> 'expired' AND id <> ?",
                    (row["item_id"], slot, assignment_id)).one():
                slot = None  # someone else holds the slot now; this label is an extra one
            cur.execute("UPDATE assignments SET state = 'done', slot = ?, draft = NULL WHERE id = ?",
                        (slot, assignment_id))
            label_id = cur.execute(
                "INSERT INTO labels (assignment_id, item_id, labeler_id, idempotency_key, tiers, best, likert, "
                "flags, comments, seconds, late, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (assignment_id, row["item_id"], labeler_id, label.idempotency_key, *_label_columns(label),
                 max(0.0, now - row["leased_at"]), int(late), now)).one()["id"]
        return SubmitResult(label_id, duplicate=False, late=late)

    def skip(self, labeler_id: int, assignment_id: int) -> None:
        """Give an item back now: its slot returns to the pool, and this person never gets it again.

        Raises:
            NotFound: not this person's assignment. Conflict: it is labeled already.
        """
        with self.db.transaction() as cur:
            row = self._own(cur, labeler_id, assignment_id)
            if row["state"] == "done":
                raise Conflict(f"item {row['item_id']} is labeled already (assignment {assignment_id}); "
                               f"edit the label instead of skipping")
            cur.execute("UPDATE assignments SET state = 'skipped', slot = NULL, draft = NULL WHERE id = ?",
                        (assignment_id,))

    def last_label(self, labeler_id: int, shown: bool = False) -> Assignment | None:
        """The person's most recent label with its item, while it can still be edited (not exported);
        ``label`` is in submit form, in display positions when ``shown``."""
        with self.db.transaction(write=False) as cur:
            row = cur.execute("SELECT assignment_id, tiers, best, likert, flags, comments, exported_at "
                              "FROM labels WHERE id = (SELECT MAX(l.id) FROM labels l JOIN items i ON "
                              "i.id = l.item_id WHERE l.labeler_id = ? AND i.campaign_id = ?)",
                              (labeler_id, self.campaign_id)).one()
            if row is None or row["exported_at"] is not None:
                return None
            assignment = self._assignment(cur, row["assignment_id"])
        label = ValidLabel("", json.loads(row["tiers"]), row["best"], _loads(row["likert"]), json.loads(row["flags"]),
                           _loads(row["comments"]) or [{} for _ in assignment.responses])
        if shown:
            label = label.to_shown(assignment.display_order)
        assignment.label = {"ranking": tiers_to_ranking(label.tiers), "best": label.best, "likert": label.likert,
                            "flags": label.flags, "comments": label.comments}
        return assignment

    def edit(self, labeler_id: int, assignment_id: int, payload: dict, shown: bool = False) -> None:
        """Replace the person's most recent label (same checks as :meth:`submit`) until it is exported.

        Raises:
            LabelError: bad label. NotFound: not this person's assignment. Conflict: not their most
                recent label, not labeled yet, or exported already.
        """
        now = self.clock()
        with self.db.transaction() as cur:
            row = self._own(cur, labeler_id, assignment_id)
            last = cur.execute("SELECT l.id, l.assignment_id, l.exported_at FROM labels l JOIN items i "
                               "ON i.id = l.item_id WHERE l.labeler_id = ? AND i.campaign_id = ? "
                               "ORDER BY l.id DESC LIMIT 1", (labeler_id, self.campaign_id)).one()
            if last is None or last["assignment_id"] != assignment_id:
                raise Conflict("only your most recent label can be edited")
            if last["exported_at"] is not None:
                raise Conflict("this label was exported already, so it can no longer be edited")
            label = self._validate(row, payload, shown)
            cur.execute("UPDATE labels SET tiers = ?, best = ?, likert = ?, flags = ?, comments = ?, edited_at = ? "
                        "WHERE id = ?", (*_label_columns(label), now, last["id"]))

    def progress(self, labeler_id: int) -> dict:
        """``{"done", "assigned", "skipped"}`` for one person (assigned = done + what they hold or can
        still get now) and the campaign's ``items`` / ``items_complete`` (gold items not counted)."""
        with self.db.transaction(write=False) as cur:
            q = lambda sql, *args: cur.execute(sql, args).one()["n"]
            mine = lambda state: q("SELECT COUNT(*) AS n FROM assignments a JOIN items i ON i.id = a.item_id "
                                   "WHERE a.labeler_id = ? AND i.campaign_id = ? AND a.state = ?",
                                   labeler_id, self.campaign_id, state)
            done, held = mine("done"), mine("active")
            open_ = q("SELECT COUNT(*) AS n FROM items i WHERE i.campaign_id = ? AND NOT EXISTS (SELECT 1 FROM "
                      "assignments a WHERE a.item_id = i.id AND a.labeler_id = ? AND a.state <> 'expired') "
                      "AND (i.gold IS NOT NULL OR (SELECT COUNT(*) FROM assignments a WHERE a.item_id = i.id "
                      "AND a.state <> 'expired' AND a.slot IS NOT NULL) < ?)",
                      self.campaign_id, labeler_id, self.config.overlap)
            skipped = mine("skipped")
        counts = self.counts()
        return {"done": done, "assigned": done + held + open_, "skipped": skipped,
                "items": counts["items"] - counts["gold_items"], "items_complete": counts["items_complete"]}

    # ---------------------------------------------------------------------------- reading
    def labeled_rows(self) -> list[dict]:
        """Every label of the campaign joined with its item, assignment and labeler, oldest first."""
        with self.db.transaction(write=False) as cur:
            rows = cur.execute(
                "SELECT l.id, l.item_id, l.tiers, l.best, l.likert, l.flags, l.comments, l.seconds, l.late, "
                "l.created_at, l.edited_at, l.exported_at, "
                "i.prompt, i.responses, i.meta, i.gold, i.source, a.display_order, a.slot, p.name AS labeler "
                "FROM labels l JOIN items i ON i.id = l.item_id JOIN assignments a ON a.id = l.assignment_id "
                "JOIN labelers p ON p.id = l.labeler_id WHERE i.campaign_id = ? ORDER BY l.id",
                (self.campaign_id,)).all()
        out = []
        for r in rows:
            row = dict(r)
            for key in ("tiers", "likert", "flags", "comments", "responses", "meta", "gold", "display_order"):
                row[key] = None if row[key] is None else json.loads(row[key])
            row["late"] = bool(row["late"])
            row["comments"] = row["comments"] or [{} for _ in row["responses"]]
            out.append(row)
        return out

    def skips(self) -> dict[int, list[str]]:
        """Who skipped which item: ``{item_id: [labeler names]}``."""
        with self.db.transaction(write=False) as cur:
            rows = cur.execute("SELECT a.item_id, p.name FROM assignments a JOIN labelers p ON p.id = a.labeler_id "
                               "WHERE p.campaign_id = ? AND a.state = 'skipped' ORDER BY a.id",
                               (self.campaign_id,)).all()
        out: dict[int, list[str]] = {}
        for r in rows:
            out.setdefault(r["item_id"], []).append(r["name"])
        return out

    def labelers(self) -> list[dict]:
        """This campaign's people: ``name``, ``active`` (token works), ``labels``, ``skipped``, ``holding``."""
        with self.db.transaction(write=False) as cur:
            rows = cur.execute(
                "SELECT p.name, p.active, "
                "(SELECT COUNT(*) FROM labels l WHERE l.labeler_id = p.id) AS labels, "
                "(SELECT COUNT(*) FROM assignments a WHERE a.labeler_id = p.id AND a.state = 'skipped') AS skipped, "
                "(SELECT COUNT(*) FROM assignments a WHERE a.labeler_id = p.id AND a.state = 'active') AS holding "
                "FROM labelers p WHERE p.campaign_id = ? ORDER BY p.name", (self.campaign_id,)).all()
        return [{**dict(r), "active": bool(r["active"])} for r in rows]

    def export_labeled(self, path: str | os.PathLike | None = None, include_gold: bool = True) -> list[Comparison]:
        """All labels so far as comparisons (one per label; rankings that tie everything are left out).

        Each row's ``meta`` holds the item's own meta (policy, sampling, seed, ...) plus ``labeler``,
        ``seconds`` (lease to submit), ``likert``, ``flags``, ``comments`` (notes per flag),
        ``display_order`` (response indices in the order shown), ``late``, ``edited`` (changed after the
        submit), ``skipped_by`` (people who skipped the item), ``item``, ``campaign``, ``labeled_at`` (UTC,
        ISO 8601) and, for gold items, ``gold`` (the known ranking). Written with
        :func:`write_comparisons` (owner-only, 0600) when ``path`` is given. Exported labels can no longer
        be edited.
        """
        comparisons, skips = [], self.skips()
        rows = self.labeled_rows()
        for row in rows:
            if len(row["tiers"]) < 2 or (row["gold"] is not None and not include_gold):
                continue
            meta = {**row["meta"], "labeler": row["labeler"], "seconds": round(row["seconds"], 3),
                    "likert": row["likert"], "flags": row["flags"], "comments": row["comments"],
                    "display_order": row["display_order"], "late": row["late"], "edited": row["edited_at"] is not None,
                    "skipped_by": skips.get(row["item_id"], []), "item": row["item_id"], "campaign": self.name,
                    "labeled_at": datetime.fromtimestamp(row["created_at"], timezone.utc).isoformat()}
            if row["gold"] is not None:
                meta["gold"] = row["gold"]
            comparisons.append(Comparison(prompt=row["prompt"], responses=row["responses"], tiers=row["tiers"],
                                          best=row["best"], meta=meta))
        if path is not None:
            private_file(path)
            write_comparisons(path, comparisons)
        with self.db.transaction() as cur:
            now = self.clock()
            for row in rows:
                if row["exported_at"] is None and (row["gold"] is None or include_gold):
                    cur.execute("UPDATE labels SET exported_at = ? WHERE id = ?", (now, row["id"]))
        return comparisons

    def counts(self) -> dict:
        """Campaign progress: items, gold items, labels, live leases, items with all slots labeled."""
        with self.db.transaction(write=False) as cur:
            q = lambda sql: cur.execute(sql, (self.campaign_id,)).one()["n"]
            return {
                "items": q("SELECT COUNT(*) AS n FROM items WHERE campaign_id = ?"),
                "gold_items": q("SELECT COUNT(*) AS n FROM items WHERE campaign_id = ? AND gold IS NOT NULL"),
                "labels": q("SELECT COUNT(*) AS n FROM labels l JOIN items i ON i.id = l.item_id "
                            "WHERE i.campaign_id = ?"),
                "active_leases": q("SELECT COUNT(*) AS n FROM assignments a JOIN items i ON i.id = a.item_id "
                                   "WHERE i.campaign_id = ? AND a.state = 'active'"),
                "skips": q("SELECT COUNT(*) AS n FROM assignments a JOIN items i ON i.id = a.item_id "
                           "WHERE i.campaign_id = ? AND a.state = 'skipped'"),
                "items_complete": q(f"SELECT COUNT(*) AS n FROM items i WHERE i.campaign_id = ? AND i.gold IS NULL "
                                    f"AND (SELECT COUNT(*) FROM labels l WHERE l.item_id = i.id) "
                                    f">= {int(self.config.overlap)}"),
            }

    # ---------------------------------------------------------------------------- helpers
    def _labeler_id(self, cur, name: str) -> int:
        row = cur.execute("SELECT id FROM labelers WHERE campaign_id = ? AND name = ?", (self.campaign_id, name)).one()
        if row is None:
            raise UserError(f"campaign {self.name!r} has no labeler named {name!r}; `stats` lists them")
        return row["id"]

    def _release(self, cur, labeler_id: int) -> int:
        held = cur.execute("SELECT COUNT(*) AS n FROM assignments WHERE labeler_id = ? AND state = 'active'",
                           (labeler_id,)).one()["n"]
        cur.execute("UPDATE assignments SET state = 'expired' WHERE labeler_id = ? AND state = 'active'", (labeler_id,))
        return held

    def _validate(self, row, payload: object, shown: bool) -> ValidLabel:
        label = validate_label(payload, len(json.loads(row["responses"])), self.config)
        return label.to_stored(json.loads(row["display_order"])) if shown else label

    def _expire(self, cur, now: float) -> None:
        cur.execute("UPDATE assignments SET state = 'expired' WHERE state = 'active' AND expires_at < ?", (now,))

    def _own(self, cur, labeler_id: int, assignment_id: int):
        row = cur.execute(
            "SELECT a.*, i.responses FROM assignments a JOIN items i ON i.id = a.item_id "
            "WHERE a.id = ? AND a.labeler_id = ? AND i.campaign_id = ?",
            (assignment_id, labeler_id, self.campaign_id)).one()
        if row is None:
            raise NotFound(f"no assignment {assignment_id} of yours in campaign {self.name!r}")
        return row

    def _assignment(self, cur, assignment_id: int) -> Assignment:
        r = cur.execute("SELECT a.id, a.item_id, a.display_order, a.expires_at, a.draft, i.prompt, i.responses, "
                        "i.gold FROM assignments a JOIN items i ON i.id = a.item_id WHERE a.id = ?",
                        (assignment_id,)).one()
        return Assignment(id=r["id"], item_id=r["item_id"], prompt=r["prompt"], responses=json.loads(r["responses"]),
                          display_order=json.loads(r["display_order"]), expires_at=r["expires_at"],
                          draft=json.loads(r["draft"]) if r["draft"] else None, gold=r["gold"] is not None)


def _loads(text: str | None):
    return None if text is None else json.loads(text)


def _label_columns(label: ValidLabel) -> tuple:
    """``tiers, best, likert, flags, comments`` as stored."""
    return (json.dumps(label.tiers), label.best, None if label.likert is None else json.dumps(label.likert),
            json.dumps(label.flags), json.dumps(label.comments))


def _shuffle_gold(item: dict) -> dict:
    """A gold item with its responses in a random order and its answer renumbered to match."""
    if item.get("gold") is None:
        return item
    order = list(range(len(item["responses"])))
    _shuffle(order)  # new position p holds old response order[p]
    new_index = {old: p for p, old in enumerate(order)}
    return {**item, "responses": [item["responses"][old] for old in order],
            "gold": [sorted(new_index[i] for i in tier) for tier in item["gold"]]}


def private_file(path: str | os.PathLike) -> None:
    """Create ``path`` readable by its owner only (0600) before it is written (or make it so)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror}") from None


def check_items(items: Iterable[dict]) -> list[dict]:
    """The items as a list, after checking each (see :meth:`Store.add_items`); nothing is written."""
    items = list(items)
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise UserError(f"item {n}: expected an object with prompt and responses, got {type(item).__name__}")
        _check_item(n, item.get("prompt"), item.get("responses"), item.get("meta") or {}, item.get("gold"))
    return items


def _check_item(n: int, prompt, responses, meta, gold) -> None:
    where = f"item {n}"
    if not isinstance(prompt, str):
        raise UserError(f"{where}: the prompt must be a string, got {type(prompt).__name__}")
    if not isinstance(responses, list) or len(responses) < 2 or not all(isinstance(r, str) for r in responses):
        raise UserError(f"{where}: responses must be a list of at least 2 strings, got {responses!r:.80}")
    if not isinstance(meta, dict):
        raise UserError(f"{where}: meta must be a JSON object, got {type(meta).__name__}")
    if gold is not None:
        flat = sorted(i for t in gold for i in t) if isinstance(gold, list) and all(
            isinstance(t, list) and t and all(type(i) is int for i in t) for t in gold) else None
        if flat != list(range(len(responses))) or len(gold) < 2:
            raise UserError(f"{where}: the gold answer must rank all {len(responses)} responses in >= 2 tiers "
                            f"(e.g. [[1], [0, 2]]), got {gold!r}")


def open_campaign(campaign_dir: str | os.PathLike, db: str | None = None,
                  clock: Callable[[], float] = time.time) -> Store:
    """Open the store of a campaign directory written by ``python -m feedback_lm.label create``.

    The database is, in order: ``db``, the ``FEEDBACK_LM_LABEL_DB`` environment variable, the URL in
    ``campaign.json``, else the directory's ``labels.sqlite``.

    Raises:
        UserError: the directory has no ``campaign.json``, or it is not the JSON ``create`` writes.
    """
    path = Path(campaign_dir) / CAMPAIGN_FILE
    if not path.is_file():
        raise UserError(f"{campaign_dir} is not a campaign directory (no {CAMPAIGN_FILE}); "
                        f"make one with python -m feedback_lm.label create {campaign_dir} ...")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        info = err
    if not isinstance(info, dict) or not isinstance(info.get("name"), str):
        raise UserError(f"{path} is corrupt (expected {{\"name\": ..., \"db\": ...}} as `create` writes it); "
                        f"restore it from a backup or write the campaign's name back into it")
    url = db or os.environ.get("FEEDBACK_LM_LABEL_DB") or info.get("db") or str(Path(campaign_dir) / SQLITE_FILE)
    return Store(url, info["name"], clock)
