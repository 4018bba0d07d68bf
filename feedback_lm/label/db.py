"""Connections for the labeling store: SQLite (default, one file) or PostgreSQL (a team), one schema.

:class:`Database` hides the three differences between the two: the placeholder (``?`` vs ``%s``),
the auto-increment primary key, and how a writing transaction serializes with the others:

* SQLite: ``BEGIN IMMEDIATE`` takes the single write lock at the start, so two concurrent
  assignments never read the same free slot. The file is in WAL mode with ``synchronous=FULL``:
  a commit returns only after the WAL is fsynced, so an acknowledged label survives a killed
  process or a power loss (https://www.sqlite.org/pragma.html#pragma_synchronous).
* PostgreSQL: every writing transaction first takes one transaction-level advisory lock
  (``pg_advisory_xact_lock``), which gives the same one-writer-at-a-time rule; commits are durable
  with the server's default ``synchronous_commit=on``.

Unique indexes (one live holder per slot, one assignment and one label per person and item, one
label per idempotency key) back up the locking in both, so a bug cannot store a double assignment.

Connections are kept one per thread (FastAPI runs sync endpoints in a thread pool). A PostgreSQL
connection left stale by a server restart is replaced when the first statement of a transaction finds
it dead (that statement is always the store's own, so the retry is transparent).

Labelers and their tokens belong to one campaign (several campaigns can share a database). A new SQLite
file is created readable by its owner only (0600); SQLite gives its WAL and shared-memory files the
database file's permissions.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from feedback_lm.errors import UserError

__all__ = ["SCHEMA", "Database"]

# One schema for both databases; {pk} is the only dialect-specific piece. Times are Unix seconds,
# JSON values are TEXT (portable, and the store only ever reads them whole).
SCHEMA = """
CREATE TABLE IF NOT EXISTS campaigns (
    id {pk},
    name TEXT NOT NULL UNIQUE,
    config TEXT NOT NULL,
    admin_token_hash TEXT UNIQUE,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS labelers (
    id {pk},
    campaign_id INTEGER NOT NULL REFERENCES campaigns(id),
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    active INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    UNIQUE (campaign_id, name)
);
CREATE TABLE IF NOT EXISTS items (
    id {pk},
    campaign_id INTEGER NOT NULL REFERENCES campaigns(id),
    prompt TEXT NOT NULL,
    responses TEXT NOT NULL,
    meta TEXT NOT NULL,
    gold TEXT,
    source TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS items_by_campaign ON items (campaign_id, id);
CREATE TABLE IF NOT EXISTS assignments (
    id {pk},
    item_id INTEGER NOT NULL REFERENCES items(id),
    labeler_id INTEGER NOT NULL REFERENCES labelers(id),
    slot INTEGER,
    state TEXT NOT NULL CHECK (state IN ('active', 'expired', 'done', 'skipped')),
    leased_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    display_order TEXT NOT NULL,
    draft TEXT,
    UNIQUE (item_id, labeler_id)
);
CREATE UNIQUE INDEX IF NOT EXISTS one_holder_per_slot ON assignments (item_id, slot) WHERE state <> 'expired';
CREATE INDEX IF NOT EXISTS assignments_by_labeler ON assignments (labeler_id, state);
CREATE TABLE IF NOT EXISTS labels (
    id {pk},
    assignment_id INTEGER NOT NULL UNIQUE REFERENCES assignments(id),
    item_id INTEGER NOT NULL REFERENCES items(id),
    labeler_id INTEGER NOT NULL REFERENCES labelers(id),
    idempotency_key TEXT NOT NULL,
    tiers TEXT NOT NULL,
    best INTEGER,
    likert TEXT,
    flags TEXT NOT NULL,
    comments TEXT,
    seconds DOUBLE PRECISION NOT NULL,
    late INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    edited_at DOUBLE PRECISION,
    exported_at DOUBLE PRECISION,
    UNIQUE (item_id, labeler_id),
    UNIQUE (labeler_id, idempotency_key)
);
"""

_PK = {"sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT", "postgres": "SERIAL PRIMARY KEY"}
_ADVISORY_KEY = 7_000_007  # any constant: the store's one writer lock in PostgreSQL
# Columns added since the first release; a database without them was made by an older version.
_NEWER_COLUMNS = (("labelers", "campaign_id, active"), ("campaigns", "admin_token_hash"),
                  ("labels", "comments, edited_at, exported_at"))


class Database:
    """A SQLite file or a PostgreSQL database, opened by URL.

    Args:
        url: ``postgresql://user@host/db`` (or ``postgres://``), ``sqlite:///path/to/file.sqlite``,
            or a plain file path (SQLite).

    Raises:
        UserError: PostgreSQL is asked for but ``psycopg`` is not installed, or the server cannot
            be reached.
    """

    def __init__(self, url: str):
        self.url = str(url)
        if self.url.startswith(("postgresql://", "postgres://")):
            self.kind = "postgres"
            try:
                import psycopg  # noqa: F401
            except ImportError:
                raise UserError("a postgresql:// store needs psycopg: pip install 'feedback_lm[label]'") from None
        else:
            self.kind = "sqlite"
            self.path = Path(self.url.removeprefix("sqlite:///") if self.url.startswith("sqlite:///") else self.url)
        self._local = threading.local()
        self._all: list = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        where = self.path if self.kind == "sqlite" else self.url.split("@")[-1]  # no password in logs
        return f"Database({self.kind}: {where})"

    # ------------------------------------------------------------------------------ connections
    def _connect(self):
        if self.kind == "sqlite":
            try:  # owner-only before SQLite creates it (a label store names people and holds token hashes)
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                pass
            except OSError as err:
                raise UserError(f"cannot create the label store {self.path}: {err.strerror}") from None
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA foreign_keys=ON")
            except sqlite3.DatabaseError as err:
                conn.close()
                raise UserError(f"{self.path} is not a readable SQLite label store ({err}); restore it from a "
                                f"backup, or point --db at the right file") from None
            return conn
        import psycopg
        from psycopg.rows import dict_row

        try:
            return psycopg.connect(self.url, row_factory=dict_row, autocommit=False)
        except psycopg.OperationalError as err:
            raise UserError(f"cannot connect to the label store {self!r}: {str(err).strip()}") from None

    def connection(self):
        """This thread's connection (opened on first use)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self.kind == "postgres" and (conn.closed or conn.broken):
            conn = None  # the server restarted or dropped us: open a new connection
        if conn is None:
            conn = self._local.conn = self._connect()
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection this object opened (in any thread)."""
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()

    # ----------------------------------------------------------------------------- transactions
    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[Cursor]:
        """A transaction that commits on success and rolls back on any exception.

        ``write=True`` serializes it with every other writing transaction (see the module docstring).
        """
        conn = self.connection()
        if self.kind == "sqlite":
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            cur = Cursor(conn.cursor(), self.kind)
        else:
            conn, cur = self._begin_postgres(conn, write)
        try:
            yield cur
        except BaseException:
            conn.rollback()
            raise
        else:
            conn.commit()
        finally:
            cur.close()

    def _begin_postgres(self, conn, write: bool):
        """The transaction's first statement; a connection the server dropped is replaced once."""
        import psycopg

        def begin(conn) -> Cursor:
            cur = Cursor(conn.cursor(), self.kind)
            if write:
                return cur.execute("SELECT pg_advisory_xact_lock(?)", (_ADVISORY_KEY,))
            return cur.execute("SET TRANSACTION READ ONLY")

        try:
            return conn, begin(conn)
        except psycopg.OperationalError:
            if not (conn.closed or conn.broken):
                raise
        self._local.conn = None
        conn = self.connection()
        return conn, begin(conn)

    def create_schema(self) -> None:
        """Create the tables and indexes if they are missing (idempotent).

        Raises:
            UserError: the database holds tables of an older, incompatible version.
        """
        statements = [s.strip() for s in SCHEMA.format(pk=_PK[self.kind]).split(";") if s.strip()]
        with self.transaction() as cur:
            for statement in statements:
                cur.execute(statement)
        for table, columns in _NEWER_COLUMNS:
            try:
                with self.transaction(write=False) as cur:
                    cur.execute(f"SELECT {columns} FROM {table} WHERE 1 = 0")
            except Exception as err:  # sqlite3 and psycopg name a missing column differently
                if "column" not in str(err).lower():
                    raise
                raise UserError(f"{self!r} holds label tables of an older feedback_lm (no {table}.{columns}); "
                                f"export its labels with that version, then use a new database") from None


class Cursor:
    """A DB-API cursor that takes ``?`` placeholders on both databases and returns dict-like rows."""

    def __init__(self, cursor, kind: str):
        self._cursor, self._kind = cursor, kind

    def execute(self, sql: str, params: tuple | list = ()) -> Cursor:
        if self._kind == "postgres":
            sql = sql.replace("?", "%s")  # the store's SQL has no literal question marks
        self._cursor.execute(sql, tuple(params))
        return self

    def one(self):
        return self._cursor.fetchone()

    def all(self) -> list:
        return self._cursor.fetchall()

    def close(self) -> None:
        self._cursor.close()
