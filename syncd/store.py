"""The SQLite store: schema and migrations, mirror tables, cursors, events, inbox, audit.

One writer owns the connection. `Store` methods that write are only ever called on the
`Writer` thread: other components hand it work with `await writer.run(fn, *args)` (from
asyncio) or `writer.call(fn, *args)` (from threads), where `fn(store, *args)` runs on the
writer thread and may use `store.db.atomic()` to make several writes one transaction.
Every producer waits for its result before handing over more, so the writer's queue is
bounded by the number of producers (inbox flusher, inbox worker, one poller per resource,
the admin/CLI requests), not by the rate of events.

Readers (status, readiness, verify) open their own connections with `Store.open_reader`;
WAL lets them read while the writer writes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Concatenate, NamedTuple, ParamSpec, TypeVar

import orjson
import sqlite_utils

from syncd.errors import StoreClosedError, StoreError
from syncd.records import AUTHORITY

SCHEMA_VERSION = 4
MIRROR_RESOURCES = ("orders", "customers", "inventory")
BOOKKEEPING_COLUMNS = (
    "_version",
    "_source",
    "_authority",
    "_synced_at",
    "_deleted",
    "_deleted_at",
    "_listed",
)
#: Record fields with these names cannot be mirrored: the columns hold bookkeeping.
RESERVED_FIELDS = frozenset(BOOKKEEPING_COLUMNS)
#: Contract fields, so the tables exist with sensible column order before the first record.
CONTRACT_FIELDS: dict[str, tuple[str, ...]] = {
    "orders": (
        "customer",
        "status",
        "total",
        "currency",
        "items",
        "createdAt",
        "updatedAt",
        "version",
    ),
    "customers": ("email", "name", "createdAt", "updatedAt", "version"),
    "inventory": ("product", "quantity", "threshold", "updatedAt", "version"),
}

P = ParamSpec("P")
T = TypeVar("T")


def utc_iso(ts: float | None = None) -> str:
    """Epoch seconds -> RFC 3339 UTC with milliseconds, the API's own timestamp format."""
    dt = datetime.fromtimestamp(time.time() if ts is None else ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_iso(value: str) -> float:
    """RFC 3339 -> epoch seconds."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


#: Values SQLite stores as they are; checked by exact type first because this runs for every
#: field of every record applied.
PLAIN_TYPES = frozenset({str, float, type(None)})
_INT_MIN, _INT_MAX = -(2**63), 2**63
_JSON = json.JSONEncoder(separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def to_json_text(value: Any) -> str:
    """Canonical JSON text of a nested value: sorted keys, compact, UTF-8. orjson is several
    times faster than the json module for the small values records nest, and this runs for
    every nested field of every record applied or compared. Values orjson refuses (integers
    past 64 bits, lone surrogates) take the json module's way; either way one value always
    gets the same text, which is what duplicate detection compares."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        return _JSON.encode(value)


def to_column_value(value: Any) -> Any:
    """Top-level record value -> what SQLite stores. Nested values become JSON text."""
    kind = type(value)
    if kind is int:
        # Beyond 64 bits SQLite cannot hold an integer; keep its digits as text.
        return value if _INT_MIN <= value < _INT_MAX else str(value)
    if kind in PLAIN_TYPES:
        return value
    if kind is list or kind is dict:
        return to_json_text(value)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return int(value) if _INT_MIN <= value < _INT_MAX else str(value)
    if isinstance(value, str | float):
        return value
    return to_json_text(value)


# -- migrations ---------------------------------------------------------------------------
# Each step takes a database at version N-1 to N inside one transaction. Never edit a
# released step: add a new one.


def _migrate_1(db: sqlite_utils.Database) -> None:
    db.execute("CREATE TABLE _meta (key TEXT PRIMARY KEY, value TEXT)")
    db.execute(
        "CREATE TABLE _cursors (resource TEXT PRIMARY KEY, cursor TEXT, last_poll_at REAL,"
        " last_error TEXT, last_error_at REAL)"
    )
    db.execute(
        "CREATE TABLE _events (event_id TEXT PRIMARY KEY, event_type TEXT, resource TEXT,"
        " record_id TEXT, version INTEGER, outcome TEXT, first_seen REAL, last_seen REAL,"
        " deliveries INTEGER NOT NULL DEFAULT 1)"
    )
    db.execute(
        "CREATE TABLE _inbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT,"
        " received_at REAL, client TEXT, headers TEXT, body BLOB)"
    )
    db.execute(
        "CREATE TABLE _dead_letters (id INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT,"
        " event_type TEXT, received_at REAL, reason TEXT, body BLOB)"
    )
    for resource, fields in CONTRACT_FIELDS.items():
        cols = ", ".join(quote(f) for f in fields)
        db.execute(
            f"CREATE TABLE {resource} (id PRIMARY KEY, {cols}, _version INTEGER NOT NULL,"
            " _source TEXT, _synced_at TEXT, _deleted INTEGER NOT NULL DEFAULT 0)"
        )


def _migrate_2(db: sqlite_utils.Database) -> None:
    # Request audit, replay bookkeeping and processing time of events.
    db.execute(
        "CREATE TABLE _audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL, client TEXT,"
        " method TEXT, path TEXT, status INTEGER, reason TEXT, event_id TEXT, body_size INTEGER)"
    )
    db.execute("CREATE INDEX _audit_at ON _audit (at)")
    db.execute("ALTER TABLE _events ADD COLUMN processed_at REAL")
    db.execute("CREATE INDEX _events_last_seen ON _events (last_seen)")
    db.execute("ALTER TABLE _dead_letters ADD COLUMN replayed_at REAL")
    db.execute("ALTER TABLE _dead_letters ADD COLUMN replay_outcome TEXT")


def _migrate_3(db: sqlite_utils.Database) -> None:
    # Full relists sweep by generation (bounded memory, no id set in RAM); tombstones record
    # when they were set; cursors remember relists and per-resource totals.
    for resource in MIRROR_RESOURCES:
        db.execute(f"ALTER TABLE {resource} ADD COLUMN _deleted_at TEXT")
        db.execute(f"ALTER TABLE {resource} ADD COLUMN _listed INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE _cursors ADD COLUMN last_full_relist_at REAL")
    db.execute("ALTER TABLE _cursors ADD COLUMN relist_generation INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE _cursors ADD COLUMN last_changes INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE _cursors ADD COLUMN last_success_at REAL")


def _migrate_4(db: sqlite_utils.Database) -> None:
    # Authority of the most authoritative source that has shown the stored state. `_source`
    # keeps saying which path brought it first; a poll that confirms a webhook's copy raises
    # only the authority, so a later same-version conflict is decided as if every copy had
    # arrived in any other order.
    for resource in MIRROR_RESOURCES:
        db.execute(f"ALTER TABLE {resource} ADD COLUMN _authority INTEGER NOT NULL DEFAULT 0")
        db.execute(
            f"UPDATE {resource} SET _authority = CASE _source WHEN 'webhook' THEN 1"
            " WHEN 'poll' THEN 2 WHEN 'fetch' THEN 2 ELSE 0 END"
        )


MIGRATIONS: tuple[Callable[[sqlite_utils.Database], None], ...] = (
    _migrate_1,
    _migrate_2,
    _migrate_3,
    _migrate_4,
)
assert len(MIGRATIONS) == SCHEMA_VERSION


class StoredState(NamedTuple):
    """What the reconciler needs to know of a stored record. `content` (field -> column value,
    NULLs dropped) is loaded only when a decision needs it (same version seen again).
    `authority` is the highest authority that has shown this state; None means that of
    `source`. A named tuple: one is built per record looked up, in the apply hot path."""

    version: int
    deleted: bool
    source: str
    content: Mapping[str, Any] | None = None
    authority: int | None = None


@dataclass(frozen=True, slots=True)
class CursorState:
    resource: str
    cursor: str | None
    last_poll_at: float | None
    last_success_at: float | None
    last_error: str | None
    last_error_at: float | None
    last_full_relist_at: float | None
    relist_generation: int
    last_changes: int


def _connect(path: str, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{Path(path).absolute()}?mode=ro", uri=True, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


class Store:
    """The mirror and bookkeeping tables of one SQLite file."""

    def __init__(self, path: str | Path, *, migrate_to: int = SCHEMA_VERSION) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = _connect(self.path)
            self.db = sqlite_utils.Database(self.conn, execute_plugins=False)
            self.db.enable_wal()
            # FULL: a commit survives power loss, which is what an acknowledgement promises.
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self._migrate(migrate_to)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        self._columns: dict[str, set[str]] = {}
        self._upserts: dict[str, tuple[tuple[str, ...], str]] = {}
        self._schema_cookie = self._read_schema_cookie()

    # -- schema -------------------------------------------------------------------------

    def schema_version(self) -> int:
        if "_meta" not in self.db.table_names():
            return 0
        row = self.conn.execute("SELECT value FROM _meta WHERE key='schema_version'").fetchone()
        return int(row[0]) if row else 0

    def _migrate(self, target: int) -> None:
        current = self.schema_version()
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {current}, newer than this syncd "
                f"understands ({SCHEMA_VERSION}); upgrade syncd"
            )
        for version in range(current + 1, target + 1):
            with self.db.atomic():
                MIGRATIONS[version - 1](self.db)
                self.conn.execute(
                    "INSERT OR REPLACE INTO _meta (key, value) VALUES ('schema_version', ?)",
                    (str(version),),
                )

    def _read_schema_cookie(self) -> int:
        return int(self.conn.execute("PRAGMA schema_version").fetchone()[0])

    def _check_schema(self) -> None:
        """Forget cached columns when the schema changed under them. A rolled-back
        transaction takes its ALTER TABLEs with it, and SQLite's schema cookie goes back too;
        without this a failed batch that added a column would make every later write name a
        column that does not exist."""
        cookie = self._read_schema_cookie()
        if cookie != self._schema_cookie:
            self._columns.clear()
            self._upserts.clear()
            self._schema_cookie = cookie

    def columns(self, resource: str) -> set[str]:
        cols = self._columns.get(resource)
        if cols is None:
            cols = {row[1] for row in self.conn.execute(f"PRAGMA table_info({quote(resource)})")}
            if not cols:
                raise StoreError(f"no mirror table for resource {resource!r}")
            self._columns[resource] = cols
        return cols

    def ensure_columns(self, resource: str, fields: Iterable[str]) -> None:
        """New fields in API records add columns; they never fail a sync."""
        self._check_schema()
        cols = self.columns(resource)
        added = False
        for name in fields:
            if name not in cols:
                self.conn.execute(f"ALTER TABLE {quote(resource)} ADD COLUMN {quote(name)}")
                cols.add(name)
                added = True
        if added:
            self._upserts.pop(resource, None)
            self._schema_cookie = self._read_schema_cookie()

    def _upsert(self, resource: str) -> tuple[tuple[str, ...], str]:
        """Field columns and the upsert statement for the table's current columns; built once
        per column set so sqlite3's statement cache reuses the prepared statement."""
        cached = self._upserts.get(resource)
        if cached is not None:
            return cached
        # Every field column is written, so a field the record no longer has becomes NULL
        # instead of keeping an old value; the relist mark is kept (see tombstone_unlisted).
        names = ("id", *sorted(c for c in self.columns(resource) if c != "id" and c not in RESERVED_FIELDS))
        col_sql = ", ".join(quote(n) for n in names)
        marks = ",".join("?" * (len(names) + 6))
        updates = ", ".join(f"{quote(n)}=excluded.{quote(n)}" for n in names[1:])
        sql = (
            f"INSERT INTO {quote(resource)} ({col_sql}, _version, _source, _authority, _synced_at,"
            f" _deleted, _listed) VALUES ({marks}) ON CONFLICT(id) DO UPDATE SET {updates},"
            " _version=excluded._version, _source=excluded._source, _authority=excluded._authority,"
            " _synced_at=excluded._synced_at, _deleted=0, _deleted_at=NULL,"
            " _listed=MAX(_listed, excluded._listed)"
        )
        self._upserts[resource] = (names, sql)
        return names, sql

    # -- mirror -------------------------------------------------------------------------

    def mirror_states(self, resource: str, ids: Sequence[Any]) -> dict[Any, StoredState]:
        out: dict[Any, StoredState] = {}
        new = tuple.__new__
        for chunk in _chunks(ids, 900):
            marks = ",".join("?" * len(chunk))
            for rid, version, deleted, source, authority in self.conn.execute(
                f"SELECT id, _version, _deleted, _source, _authority FROM {quote(resource)}"
                f" WHERE id IN ({marks})",
                chunk,
            ):
                # tuple.__new__ skips the named tuple's Python-level __new__ (one per record).
                out[rid] = new(StoredState, (version, deleted != 0, source, None, authority))
        return out

    def mirror_contents(self, resource: str, ids: Sequence[Any]) -> dict[Any, dict[str, Any]]:
        """Field values of stored records (NULLs dropped), keyed by id."""
        self._check_schema()
        names = self._upsert(resource)[0]
        col_sql = ", ".join(quote(n) for n in names)
        out: dict[Any, dict[str, Any]] = {}
        for chunk in _chunks(ids, 900):
            marks = ",".join("?" * len(chunk))
            for row in self.conn.execute(
                f"SELECT {col_sql} FROM {quote(resource)} WHERE id IN ({marks})", chunk
            ):
                out[row[0]] = {
                    name: value for name, value in zip(names, row, strict=True) if value is not None
                }
        return out

    def write_records(
        self,
        resource: str,
        records: Sequence[tuple[Mapping[str, Any], int, str]],
        *,
        synced_at: str,
        listed: int | None = None,
    ) -> None:
        """Insert or replace whole records. `records` holds (data, version, source)."""
        if not records:
            return
        self._check_schema()
        cols = self.columns(resource)
        fields: set[str] = set()
        for data, _, _ in records:
            fields.update(data)
        if not fields <= cols:
            # Keep the order fields first appear in, so new columns read like the records.
            seen: dict[str, None] = {}
            for data, _, _ in records:
                seen.update(dict.fromkeys(data))
            self.ensure_columns(resource, seen)
        names, sql = self._upsert(resource)
        listed_value = 0 if listed is None else listed
        conv = to_column_value
        plain = PLAIN_TYPES
        authority = AUTHORITY
        rows: list[list[Any]] = []
        for data, version, source in records:
            row = [v if type(v) in plain else conv(v) for v in map(data.get, names)]
            row += (version, source, authority.get(source, 0), synced_at, 0, listed_value)
            rows.append(row)
        self.conn.executemany(sql, rows)

    def raise_authority(self, resource: str, rows: Sequence[tuple[int, Any]]) -> None:
        """Record that a more authoritative source confirmed the stored state:
        `rows` holds (authority, id). Leaves `_source` and `_synced_at` alone."""
        self.conn.executemany(
            f"UPDATE {quote(resource)} SET _authority=? WHERE id=? AND _authority<?",
            [(authority, rid, authority) for authority, rid in rows],
        )

    def mark_listed(self, resource: str, ids: Sequence[Any], generation: int) -> None:
        for chunk in _chunks(ids, 900):
            marks = ",".join("?" * len(chunk))
            self.conn.execute(
                f"UPDATE {quote(resource)} SET _listed=? WHERE id IN ({marks})",
                (generation, *chunk),
            )

    def tombstone_unlisted(self, resource: str, generation: int, *, spare_since: str, now: str) -> int:
        """Mark deleted what the full listing of `generation` did not return, sparing records
        that changed (or were synced) since `spare_since`: they may simply not be visible to
        listings yet. Returns how many were tombstoned."""
        cur = self.conn.execute(
            f"UPDATE {quote(resource)} SET _deleted=1, _deleted_at=? WHERE _deleted=0 AND _listed<?"
            " AND COALESCE(updatedAt, '') < ? AND COALESCE(_synced_at, '') < ?",
            (now, generation, spare_since, spare_since),
        )
        return cur.rowcount

    def mirror_counts(self, resource: str) -> tuple[int, int]:
        """(live records, tombstoned records)."""
        row = self.conn.execute(
            f"SELECT COUNT(*) - COALESCE(SUM(_deleted), 0), COALESCE(SUM(_deleted), 0) FROM {quote(resource)}"
        ).fetchone()
        return int(row[0]), int(row[1])

    def mirror_versions(
        self, resource: str, *, include_deleted: bool = False
    ) -> Iterator[tuple[Any, int, bool]]:
        where = "" if include_deleted else " WHERE _deleted=0"
        for rid, version, deleted in self.conn.execute(
            f"SELECT id, _version, _deleted FROM {quote(resource)}{where} ORDER BY id"
        ):
            yield rid, version, bool(deleted)

    # -- cursors ------------------------------------------------------------------------

    def cursor_state(self, resource: str) -> CursorState:
        row = self.conn.execute(
            "SELECT cursor, last_poll_at, last_success_at, last_error, last_error_at,"
            " last_full_relist_at, relist_generation, last_changes FROM _cursors WHERE resource=?",
            (resource,),
        ).fetchone()
        if row is None:
            return CursorState(resource, None, None, None, None, None, None, 0, 0)
        return CursorState(resource, *row)

    def set_cursor(self, resource: str, cursor: str | None) -> None:
        self.conn.execute(
            "INSERT INTO _cursors (resource, cursor) VALUES (?, ?)"
            " ON CONFLICT(resource) DO UPDATE SET cursor=excluded.cursor",
            (resource, cursor),
        )

    def update_cursor_meta(self, resource: str, **fields: Any) -> None:
        allowed = {
            "last_poll_at",
            "last_success_at",
            "last_error",
            "last_error_at",
            "last_full_relist_at",
            "relist_generation",
            "last_changes",
        }
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown cursor fields {sorted(unknown)}; allowed: {sorted(allowed)}")
        self.conn.execute("INSERT OR IGNORE INTO _cursors (resource) VALUES (?)", (resource,))
        sets = ", ".join(f"{k}=?" for k in fields)
        self.conn.execute(f"UPDATE _cursors SET {sets} WHERE resource=?", (*fields.values(), resource))

    # -- meta ---------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM _meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO _meta (key, value) VALUES (?, ?)", (key, value))

    # -- events, dead letters, audit ------------------------------------------------------

    def known_events(self, event_ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for chunk in _chunks(event_ids, 900):
            marks = ",".join("?" * len(chunk))
            found.update(
                r[0]
                for r in self.conn.execute(f"SELECT event_id FROM _events WHERE event_id IN ({marks})", chunk)
            )
        return found

    def add_dead_letter(
        self,
        event_id: str | None,
        event_type: str | None,
        received_at: float,
        reason: str,
        body: bytes,
    ) -> None:
        self.conn.execute(
            "INSERT INTO _dead_letters (event_id, event_type, received_at, reason, body) VALUES (?, ?, ?, ?, ?)",
            (event_id, event_type, received_at, reason, body),
        )

    def add_audit(self, rows: Sequence[tuple[float, str, str, str, int, str, str | None, int]]) -> None:
        """(at, client, method, path, status, reason, event_id, body_size) per request."""
        self.conn.executemany(
            "INSERT INTO _audit (at, client, method, path, status, reason, event_id, body_size)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    def prune(self, now: float, *, dedupe_retention: float, audit_retention: float) -> tuple[int, int]:
        """Forget event ids and audit rows past their retention. Pending events are kept."""
        with self.db.atomic():
            events = self.conn.execute(
                "DELETE FROM _events WHERE last_seen < ? AND outcome != 'pending'",
                (now - dedupe_retention,),
            ).rowcount
            audit = self.conn.execute("DELETE FROM _audit WHERE at < ?", (now - audit_retention,)).rowcount
        return events, audit

    def close(self) -> None:
        self.conn.close()

    @staticmethod
    def open_reader(path: str | Path) -> sqlite3.Connection:
        """A read-only connection for status, readiness and verify; never writes."""
        if not Path(path).exists():
            raise StoreError(f"no store at {path}")
        return _connect(str(path), readonly=True)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


_STOP = object()


class Writer:
    """The single thread that owns the store's connection and runs handed-over work in order."""

    def __init__(self, store_factory: Callable[[], Store]) -> None:
        self._factory = store_factory
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._store: Store | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._main, name="syncd-store-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        try:
            self._store = self._factory()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            fn, args, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(self._store, *args))
            except BaseException as exc:
                future.set_exception(exc)
        self._store.close()

    def submit(self, fn: Callable[Concatenate[Store, P], T], *args: Any) -> concurrent.futures.Future[T]:
        if self._closed:
            raise StoreClosedError()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put((fn, args, future))
        return future

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(store, *args)` on the writer thread and wait (for threads and sync code)."""
        return self.submit(fn, *args).result()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(store, *args)` on the writer thread and await it (for asyncio code)."""
        return await asyncio.wrap_future(self.submit(fn, *args))

    def stop(self) -> None:
        """Finish the work already handed over, then close the connection."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()


@contextmanager
def running_writer(path: str | Path) -> Iterator[Writer]:
    writer = Writer(lambda: Store(path))
    writer.start()
    try:
        yield writer
    finally:
        writer.stop()
