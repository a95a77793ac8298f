"""The SQLite store: the connection, migrations, `_meta`, and the mirror and cursor tables.

The other table families have a module each: events (`_events`, `_inbox`), dead_letters,
audit; the schema and `_meta` keys are in schema.

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

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import sqlite_utils

from syncd.errors import StoreError
from syncd.store.cursors import CursorTable
from syncd.store.mirror import MirrorTables
from syncd.store.recorder import ChangeRecorder
from syncd.store.schema import META_MIRROR_ID, META_SCHEMA_VERSION, MIGRATIONS, SCHEMA_VERSION
from syncd.store.sql import connect, unsynced_commits


class Store(MirrorTables, CursorTable):
    """One SQLite file: its connection, migrations and `_meta`; the mirror tables
    (`MirrorTables`) and cursors (`CursorTable`) are methods, the other tables' statements
    are in their modules."""

    def __init__(
        self, path: str | Path, *, migrate_to: int = SCHEMA_VERSION, record_changes: bool = True
    ) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = connect(self.path)
            self.db = sqlite_utils.Database(self.conn, execute_plugins=False)
            self.db.enable_wal()
            # FULL: a commit survives power loss, which is what an acknowledgement promises.
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self._migrate(migrate_to)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        self._init_mirror()
        #: Writes the change log with the mirror writes (`changes.enabled`); None: no log.
        self.recorder: ChangeRecorder | None = None
        mirror_id = self.get_meta(META_MIRROR_ID) if migrate_to >= 6 else None
        if record_changes and mirror_id is not None:
            self.recorder = ChangeRecorder(mirror_id)

    # -- schema -------------------------------------------------------------------------

    def schema_version(self) -> int:
        if "_meta" not in self.db.table_names():
            return 0
        row = self.conn.execute("SELECT value FROM _meta WHERE key=?", (META_SCHEMA_VERSION,)).fetchone()
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
                    "INSERT OR REPLACE INTO _meta (key, value) VALUES (?, ?)",
                    (META_SCHEMA_VERSION, str(version)),
                )

    # -- meta ---------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM _meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO _meta (key, value) VALUES (?, ?)", (key, value))

    def delete_meta(self, key: str) -> None:
        self.conn.execute("DELETE FROM _meta WHERE key=?", (key,))

    @staticmethod
    def read_meta(conn: sqlite3.Connection) -> dict[str, str]:
        """Every `_meta` key with a value; works on a reader connection."""
        return {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM _meta") if v is not None}

    def close(self) -> None:
        self.conn.close()

    @staticmethod
    def open_reader(path: str | Path) -> sqlite3.Connection:
        """A read-only connection for status, readiness and verify; never writes."""
        if not Path(path).exists():
            raise StoreError(f"no store at {path}")
        conn = connect(str(path), readonly=True)
        try:
            has_meta = conn.execute("SELECT 1 FROM sqlite_master WHERE name='_meta'").fetchone()
            row = (
                conn.execute("SELECT value FROM _meta WHERE key=?", (META_SCHEMA_VERSION,)).fetchone()
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


@contextlib.contextmanager
def replayable_transaction(store: Store) -> Iterator[None]:
    """One transaction committed without its own fsync (synchronous=NORMAL), for work that
    can be redone from what is already durable: applying inbox rows (they are deleted in the
    same transaction, so a lost commit leaves them to be applied again) and the audit trail.
    WAL keeps commits in order and the next FULL commit (the next acknowledgement) syncs
    everything before it, so this never weakens what an acknowledgement promises; it only
    keeps the disk's flushes for acknowledgements (`syncd.store.sql.unsynced_commits`)."""
    if store.conn.in_transaction:
        # Joining a caller's transaction: its own commit decides how it is synced.
        with store.db.atomic():
            yield
        return
    with unsynced_commits(store.conn), store.db.atomic():
        yield
