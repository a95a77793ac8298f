"""The mirror tables (one per resource): field -> column mapping, whole-record upserts,
authority, relist marks and tombstones. `MirrorTables` is a part of `Store`."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlite_utils

from syncd.core.records import AUTHORITY
from syncd.core.values import BOUND_AS_IS, StoredState, to_column_value, to_stored_value
from syncd.errors import ColumnLimitError, StoreError
from syncd.store.schema import RESERVED_FIELDS, column_for, field_key, fold, quote
from syncd.store.sql import chunks
from syncd.timefmt import to_epoch

#: Live records a full listing did not return and that are not spared: changed or synced
#: before the spare instant (an updatedAt that is no instant spares nothing).
_UNLISTED = (
    "_deleted=0 AND _listed<? AND COALESCE(rfc3339_epoch(updatedAt), -1e300) < ?"
    " AND COALESCE(rfc3339_epoch(_synced_at), -1e300) < ?"
)


class MirrorTables:
    """The mirror half of `Store`: its methods run on the store's connection."""

    conn: sqlite3.Connection
    db: sqlite_utils.Database

    def _init_mirror(self) -> None:
        self._columns: dict[str, set[str]] = {}
        #: Per resource, field -> column (see `syncd.store.schema.column_for`), from `_fields`.
        self._fields: dict[str, dict[str, str]] = {}
        self._upserts: dict[str, tuple[tuple[str, ...], str]] = {}
        self._schema_cookie = self._read_schema_cookie()

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
        for chunk in chunks(ids, 900):
            marks = ",".join("?" * len(chunk))
            for rid, version, deleted, source, authority in self.conn.execute(
                f"SELECT id, _version, _deleted, _source, _authority FROM {quote(resource)}"
                f" WHERE id IN ({marks})",
                chunk,
            ):
                out[rid] = StoredState(version, deleted != 0, source, None, authority)
        return out

    def mirror_contents(self, resource: str, ids: Sequence[Any]) -> dict[Any, dict[str, Any]]:
        """Field values of stored records (NULLs dropped) by field name, keyed by id."""
        self._check_schema()
        names = self._upsert(resource)[0]
        mapping = self.field_columns(resource)
        col_sql = ", ".join(quote(mapping.get(n, n)) for n in names)
        out: dict[Any, dict[str, Any]] = {}
        for chunk in chunks(ids, 900):
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
        as_is = BOUND_AS_IS
        authority = AUTHORITY
        rows: list[list[Any]] = []
        for data, version, source in records:
            row = [v if type(v) in as_is else conv(v) for v in map(data.get, names)]
            row += (version, source, authority.get(source, 0), synced_at, 0, listed_value)
            rows.append(row)
        try:
            self.conn.executemany(sql, rows)
        except (UnicodeEncodeError, OverflowError):
            # A string with a lone surrogate or an integer past 64 bits: rare, so both are
            # bound as they are and converted only when binding fails. The upsert makes
            # writing the rows before it again harmless.
            for row in rows:
                row[:] = [to_stored_value(v) for v in row]
            self.conn.executemany(sql, rows)

    def raise_authority(self, resource: str, rows: Sequence[tuple[int, Any]]) -> None:
        """Record that a more authoritative source confirmed the stored state:
        `rows` holds (authority, id). Leaves `_source` and `_synced_at` alone."""
        self.conn.executemany(
            f"UPDATE {quote(resource)} SET _authority=? WHERE id=? AND _authority<?",
            [(authority, rid, authority) for authority, rid in rows],
        )

    def mark_listed(self, resource: str, ids: Sequence[Any], generation: int) -> None:
        for chunk in chunks(ids, 900):
            marks = ",".join("?" * len(chunk))
            self.conn.execute(
                f"UPDATE {quote(resource)} SET _listed=? WHERE id IN ({marks})",
                (generation, *chunk),
            )

    def tombstone_unlisted(self, resource: str, generation: int, *, spare_since: str, now: str) -> list[Any]:
        """Mark deleted what the full listing of `generation` did not return, sparing records
        that changed (or were synced) since `spare_since`: they may simply not be visible to
        listings yet. Returns the ids tombstoned (the change log records each)."""
        rows = self.conn.execute(
            f"UPDATE {quote(resource)} SET _deleted=1, _deleted_at=? WHERE {_UNLISTED} RETURNING id",
            (now, *self._unlisted_args(generation, spare_since)),
        ).fetchall()
        return [row[0] for row in rows]

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


def mirror_counts(conn: sqlite3.Connection, resource: str) -> tuple[int, int]:
    """(live records, tombstoned records); works on a reader connection."""
    row = conn.execute(
        f"SELECT COUNT(*) - COALESCE(SUM(_deleted), 0), COALESCE(SUM(_deleted), 0) FROM {quote(resource)}"
    ).fetchone()
    return int(row[0]), int(row[1])
