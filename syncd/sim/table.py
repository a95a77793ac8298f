"""One resource's records: the true latest versions, and what listings can see.

Listings show, per record, the newest version whose visibility time has passed. Visible
versions are indexed by their (updatedAt ms, id) key in a sorted list, so a page is a bisect
plus a slice, never a scan; every version's JSON is encoded once and kept as bytes, so a page
body is a join. A record is one slotted object: memory stays near the size of the JSON itself.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sortedcontainers import SortedList  # type: ignore[import-untyped]

RecordId = int | str

# Integer ids share one int key with their timestamp: ms << 40 | id. Smaller than a tuple,
# and orders (the bulk of any preload) are int-keyed. 2**40 ids is far beyond any workload.
_ID_BITS = 40
_ID_MASK = (1 << _ID_BITS) - 1


class _Entry:
    __slots__ = ("body", "ms", "version", "vis_body", "vis_ms", "vis_version")

    def __init__(self, version: int, ms: int, body: bytes) -> None:
        self.version = version
        self.ms = ms
        self.body = body
        self.vis_version = 0
        self.vis_ms = 0
        self.vis_body: bytes | None = None


@dataclass(frozen=True, slots=True)
class Page:
    bodies: list[bytes]
    last: tuple[int, RecordId] | None
    """(updatedAt ms, id) of the last record on the page."""
    has_more: bool


class Table:
    """Records of one resource. Not thread-safe: owned by the simulator's event loop."""

    def __init__(self, name: str, *, int_ids: bool) -> None:
        self.name = name
        self.int_ids = int_ids
        self._entries: dict[RecordId, _Entry] = {}
        self._keys = SortedList()
        # (visible_at, seq, id, version, ms, body): changes not yet visible to listings.
        self._pending: list[tuple[float, int, RecordId, int, int, bytes]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, rid: RecordId) -> bool:
        return rid in self._entries

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    @property
    def visible_count(self) -> int:
        return len(self._keys)

    def _key(self, ms: int, rid: RecordId) -> Any:
        if self.int_ids:
            assert isinstance(rid, int)
            return (ms << _ID_BITS) | rid
        return (ms, rid)

    def _split(self, key: Any) -> tuple[int, RecordId]:
        if self.int_ids:
            return key >> _ID_BITS, key & _ID_MASK
        ms, rid = key
        return ms, rid

    def parse_id(self, text: str) -> RecordId | None:
        """A path or cursor id as this table spells ids, or None when it cannot be one."""
        if not self.int_ids:
            return text
        if not text.isdigit() or len(text) > 12:
            return None
        return int(text)

    def bulk_load(self, rows: Iterable[tuple[RecordId, int, int, bytes]]) -> None:
        """Insert new records, visible at once: (id, version, updatedAt ms, body)."""
        keys = []
        entries = self._entries
        for rid, version, ms, body in rows:
            entry = _Entry(version, ms, body)
            entry.vis_version, entry.vis_ms, entry.vis_body = version, ms, body
            entries[rid] = entry
            keys.append(self._key(ms, rid))
        self._keys.update(keys)

    def write(self, rid: RecordId, version: int, ms: int, body: bytes, visible_at: float) -> None:
        """Record a change as the latest version; listings see it from `visible_at` on."""
        entry = self._entries.get(rid)
        if entry is None:
            self._entries[rid] = _Entry(version, ms, body)
        else:
            entry.version, entry.ms, entry.body = version, ms, body
        self._seq += 1
        heapq.heappush(self._pending, (visible_at, self._seq, rid, version, ms, body))

    def delete(self, rid: RecordId) -> bool:
        """Hard-delete: gone from GET and listings at once; its pending changes die with it."""
        entry = self._entries.pop(rid, None)
        if entry is None:
            return False
        if entry.vis_body is not None:
            self._keys.remove(self._key(entry.vis_ms, rid))
        return True

    def promote(self, now: float) -> int:
        """Make every change whose time has come visible; returns how many were applied."""
        pending = self._pending
        applied = 0
        while pending and pending[0][0] <= now:
            _, _, rid, version, ms, body = heapq.heappop(pending)
            entry = self._entries.get(rid)
            # A newer version may already be visible (its lag was shorter), or the record
            # may be deleted; either way this older change never shows.
            if entry is None or version <= entry.vis_version:
                continue
            if entry.vis_body is not None:
                self._keys.remove(self._key(entry.vis_ms, rid))
            entry.vis_version, entry.vis_ms, entry.vis_body = version, ms, body
            self._keys.add(self._key(ms, rid))
            applied += 1
        return applied

    def flush(self) -> int:
        """Make every pending change visible now, whatever its lag."""
        return self.promote(float("inf"))

    def get(self, rid: RecordId) -> bytes | None:
        entry = self._entries.get(rid)
        return None if entry is None else entry.body

    def version_of(self, rid: RecordId) -> int | None:
        entry = self._entries.get(rid)
        return None if entry is None else entry.version

    def page(self, *, since_ms: int | None, after: tuple[int, RecordId] | None, limit: int) -> Page:
        """Visible records with key >= since and key > after, in key order, at most `limit`."""
        keys = self._keys
        if after is not None:
            start = keys.bisect_right(self._key(*after))
        elif since_ms is not None:
            # The smallest possible key at since_ms: id 0, or the 1-tuple that sorts first.
            start = keys.bisect_left(since_ms << _ID_BITS if self.int_ids else (since_ms,))
        else:
            start = 0
        stop = min(start + limit, len(keys))
        entries = self._entries
        bodies: list[bytes] = []
        last: tuple[int, RecordId] | None = None
        for key in keys.islice(start, stop):
            last = self._split(key)
            body = entries[last[1]].vis_body
            assert body is not None
            bodies.append(body)
        return Page(bodies, last, stop < len(keys))

    def truth(self) -> dict[str, int]:
        return {str(rid): entry.version for rid, entry in self._entries.items()}
