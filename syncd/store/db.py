"""The SQLite store: mirror tables, cursors, events, inbox, audit (schema: syncd.store.schema).

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

import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from syncd.core.records import AUTHORITY
from syncd.core.values import PLAIN_TYPES, StoredState, storable_text, to_column_value
from syncd.errors import ColumnLimitError, StoreError
from syncd.store.schema import MIGRATIONS, RESERVED_FIELDS, SCHEMA_VERSION, column_for, field_key, fold, quote
from syncd.timefmt import to_epoch, try_epoch


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


#: Live records a full listing did not return and that are not spared: changed or synced
#: before the spare instant (an updatedAt that is no instant spares nothing).
_UNLISTED = (
    "_deleted=0 AND _listed<? AND COALESCE(rfc3339_epoch(updatedAt), -1e300) < ?"
    " AND COALESCE(rfc3339_epoch(_synced_at), -1e300) < ?"
)


def _connect(path: str, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{Path(path).absolute()}?mode=ro", uri=True, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=10000")
    # Timestamps are compared as instants, in SQL too: string order is wrong across offsets.
    conn.create_function("rfc3339_epoch", 1, try_epoch, deterministic=True)
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
        #: Per resource, field -> column (see `syncd.store.schema.column_for`), from `_fields`.
        self._fields: dict[str, dict[str, str]] = {}
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
            self.forget_schema()
            self._schema_cookie = cookie

    def forget_schema(self) -> None:
        """Drop cached columns, field mappings and statements (after a rollback)."""
        self._columns.clear()
        self._fields.clear()
        self._upserts.clear()

    def columns(self, resource: str) -> set[str]:
        cols = self._columns.get(resource)
        if cols is None:
            cols = {row[1] for row in self.conn.execute(f"PRAGMA table_info({quote(resource)})")}
            if not cols:
                raise StoreError(f"no mirror table for resource {resource!r}")
            self._columns[resource] = cols
        return cols

    def field_columns(self, resource: str) -> dict[str, str]:
        """Field -> column of every field the resource's table has a column for."""
        mapping = self._fields.get(resource)
        if mapping is None:
            mapping = {
                json.loads(key): col
                for key, col in self.conn.execute(
                    "SELECT field, col FROM _fields WHERE resource=?", (resource,)
                )
            }
            self._fields[resource] = mapping
        return mapping

    def ensure_columns(self, resource: str, fields: Iterable[str]) -> None:
        """New fields in API records add columns; they never fail a sync. A record whose new
        fields would take the table past SQLite's column limit raises ColumnLimitError (the
        reconciler makes it a dead letter, and the batch goes on without it)."""
        self._check_schema()
        cols = self.columns(resource)
        mapping = self.field_columns(resource)
        new = [name for name in dict.fromkeys(fields) if name not in mapping]
        if not new:
            return
        limit = self.conn.getlimit(sqlite3.SQLITE_LIMIT_COLUMN)
        if len(cols) + len(new) > limit:
            raise ColumnLimitError(resource, len(cols) + len(new), limit)
        taken = {fold(c) for c in cols}
        for name in new:
            col = column_for(name, taken)
            self.conn.execute(f"ALTER TABLE {quote(resource)} ADD COLUMN {quote(col)}")
            self.conn.execute(
                "INSERT INTO _fields (resource, field, col) VALUES (?, ?, ?)",
                (resource, field_key(name), col),
            )
            cols.add(col)
            taken.add(fold(col))
            mapping[name] = col
        self._upserts.pop(resource, None)
        self._schema_cookie = self._read_schema_cookie()

    def _upsert(self, resource: str) -> tuple[tuple[str, ...], str]:
        """The fields in column order and the upsert statement for the table's current
        columns; built once per column set so sqlite3's statement cache reuses the prepared
        statement."""
        cached = self._upserts.get(resource)
        if cached is not None:
            return cached
        # Every field column is written, so a field the record no longer has becomes NULL
        # instead of keeping an old value; the relist mark is kept (see tombstone_unlisted).
        names = ("id", *sorted(c for c in self.columns(resource) if c != "id" and c not in RESERVED_FIELDS))
        by_column = {col: name for name, col in self.field_columns(resource).items()}
        fields = tuple(by_column.get(n, n) for n in names)
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
        self._upserts[resource] = (fields, sql)
        return fields, sql

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
        """Field values of stored records (NULLs dropped) by field name, keyed by id."""
        self._check_schema()
        names = self._upsert(resource)[0]
        mapping = self.field_columns(resource)
        col_sql = ", ".join(quote(mapping.get(n, n)) for n in names)
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
        known = self.field_columns(resource).keys()
        fields: set[str] = set()
        for data, _, _ in records:
            fields.update(data)
        if not fields <= known:
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
        try:
            self.conn.executemany(sql, rows)
        except UnicodeEncodeError:
            # A string with a lone surrogate: rare, so strings are bound as they are and
            # escaped only when binding fails. The upsert makes writing the rows before it
            # again harmless.
            for row in rows:
                row[:] = [storable_text(v) if type(v) is str else v for v in row]
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
            f"UPDATE {quote(resource)} SET _deleted=1, _deleted_at=? WHERE {_UNLISTED}",
            (now, *self._unlisted_args(generation, spare_since)),
        )
        return cur.rowcount

    def count_unlisted(self, resource: str, generation: int, *, spare_since: str) -> int:
        """How many records `tombstone_unlisted` would mark deleted now."""
        row = self.conn.execute(
            f"SELECT COUNT(*) FROM {quote(resource)} WHERE {_UNLISTED}",
            self._unlisted_args(generation, spare_since),
        ).fetchone()
        return int(row[0])

    @staticmethod
    def _unlisted_args(generation: int, spare_since: str) -> tuple[int, float, float]:
        spare = to_epoch(spare_since)
        return generation, spare, spare

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

    def delete_meta(self, key: str) -> None:
        self.conn.execute("DELETE FROM _meta WHERE key=?", (key,))

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
        *,
        resource: str | None = None,
        record_id: str | None = None,
        source: str = "webhook",
    ) -> None:
        """Keep what could not be applied, with why. `body` is the webhook body, or for a
        record from a listing (`source="poll"`) the record as JSON."""
        self.conn.execute(
            "INSERT INTO _dead_letters (event_id, event_type, received_at, reason, body, resource,"
            " record_id, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                event_id,
                _text(event_type),
                received_at,
                _text(reason),
                body,
                resource,
                _text(record_id),
                source,
            ),
        )

    def add_audit(self, rows: Sequence[tuple[float, str, str, str, int, str, str | None, int]]) -> None:
        """(at, client, method, path, status, reason, event_id, body_size) per request."""
        insert_values(
            self.conn,
            "INSERT INTO _audit (at, client, method, path, status, reason, event_id, body_size)",
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
        conn = _connect(str(path), readonly=True)
        try:
            has_meta = conn.execute("SELECT 1 FROM sqlite_master WHERE name='_meta'").fetchone()
            row = (
                conn.execute("SELECT value FROM _meta WHERE key='schema_version'").fetchone()
                if has_meta
                else None
            )
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot read store {path}: {exc}") from None
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            conn.close()
            raise StoreError(
                f"{path} has schema version {row[0]}, newer than this syncd understands"
                f" ({SCHEMA_VERSION}); upgrade syncd"
            )
        return conn


#: The one definition of an open dead letter, shared by `syncd status` and `syncd replay
#: --all`: never replayed, or replayed and still invalid. A replay whose fetch failed leaves
#: the letter as it was; one that applied it (or found it stale, a duplicate, gone) closes it.
OPEN_DEAD_LETTER_SQL = "(replay_outcome IS NULL OR replay_outcome = 'invalid')"


def dead_letter_counts(conn: sqlite3.Connection) -> tuple[int, int]:
    """(all dead letters, open ones); works on a reader connection."""
    total, still_open = conn.execute(
        f"SELECT COUNT(*), COALESCE(SUM({OPEN_DEAD_LETTER_SQL}), 0) FROM _dead_letters"
    ).fetchone()
    return int(total), int(still_open)


def _text(value: str | None) -> str | None:
    """Text SQLite's UTF-8 can hold: lone surrogates written as backslash escapes."""
    if value is None or value.isascii():
        return value
    return value.encode("utf-8", "backslashreplace").decode()


#: Rows per multi-row INSERT at most.
_MAX_VALUES_ROWS = 256


def insert_values(conn: sqlite3.Connection, head: str, rows: Sequence[Sequence[Any]]) -> None:
    """`head` + `VALUES (?, ...), (?, ...)` for all `rows` in a few statements rather than one
    per row: executemany steps (and hands the GIL back and forth) once per row, which under
    load costs the event loop more than the insert itself. Batches are split into powers of
    two, so at most nine statement shapes per `head` reach the statement cache, and each
    statement stays within the connection's limit on parameters (999 in SQLite builds
    before 3.32)."""
    if not rows:
        return
    width = len(rows[0])
    row_marks = "(" + ",".join("?" * width) + ")"
    cap = min(_MAX_VALUES_ROWS, max(1, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width))
    start = 0
    while start < len(rows):
        size = 1 << (min(cap, len(rows) - start).bit_length() - 1)
        chunk = rows[start : start + size]
        conn.execute(f"{head} VALUES {','.join([row_marks] * size)}", [v for row in chunk for v in row])
        start += size


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
