"""Compare the mirror with a full listing of the API: missing, stale, extra (and ahead).

Memory stays bounded however large the resource: each page's (id, version) pairs go into a
temporary table of a read-only connection to the store, and the comparison is SQL over that
table and the mirror table (syncd.store.drift).

Listings lag behind writes (the contract's visibility lag), so verify is meant for a quiet
shop. A mirror version higher than the listing's is that lag showing, not drift: it is
reported as "ahead" and does not fail the check.
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from syncd.errors import CursorExpiredError
from syncd.poll.listing_guards import PagingGuard
from syncd.store.drift import add_listed, compare_listing, end_listing, start_listing

if TYPE_CHECKING:
    from syncd.api import PetstoreClient
    from syncd.poll.progress import ProgressReporter

#: Expired cursors before verify gives up on a resource.
MAX_RESTARTS = 5


@dataclass
class Drift:
    count: int = 0
    sample: list[Any] = field(default_factory=list)


@dataclass
class VerifyReport:
    resource: str
    listed: int = 0
    mirror_live: int = 0
    missing: Drift = field(default_factory=Drift)
    stale: Drift = field(default_factory=Drift)
    extra: Drift = field(default_factory=Drift)
    ahead: Drift = field(default_factory=Drift)

    @property
    def ok(self) -> bool:
        return not (self.missing.count or self.stale.count or self.extra.count)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def describe(self) -> str:
        head = f"{self.resource}: {self.listed} listed, {self.mirror_live} live in the mirror"
        parts = []
        for name, drift, note in (
            ("missing", self.missing, "listed by the API, not live in the mirror"),
            ("stale", self.stale, "mirror version lower than the API's"),
            ("extra", self.extra, "live in the mirror, not listed by the API"),
            ("ahead", self.ahead, "mirror newer than the listing: listing lag, not drift"),
        ):
            if drift.count:
                ids = ", ".join(repr(i) for i in drift.sample)
                parts.append(f"  {name}: {drift.count} ({note}); first: {ids}")
        status = "OK" if self.ok else "DRIFT"
        return "\n".join([f"{head}: {status}", *parts])


def compare(conn: sqlite3.Connection, report: VerifyReport, sample: int = 5) -> None:
    """Fill `report` from the listing in the connection's temp table (syncd.store.drift)."""
    found = compare_listing(conn, report.resource, sample)
    report.listed = found["listed"]
    report.mirror_live = found["mirror_live"]
    report.missing = Drift(*found["missing"])
    report.stale = Drift(*found["stale"])
    report.ahead = Drift(*found["ahead"])
    report.extra = Drift(*found["extra"])


async def verify_resource(
    client: PetstoreClient,
    conn: sqlite3.Connection,
    resource: str,
    *,
    page_size: int = 1000,
    sample: int = 5,
    progress: ProgressReporter | None = None,
    max_pages: int = 100_000,
) -> VerifyReport:
    """List `resource` in full and compare it with the mirror behind `conn` (read-only).
    Raises ListingLoopError when the API's listing does not end (see PagingGuard)."""
    restarts = 0
    while True:
        start_listing(conn)
        if progress is not None:
            progress.start(resource, "verify")
        paging = PagingGuard(resource, max_pages)
        try:
            async for page in client.list_pages(resource, since=None, limit=page_size):
                paging.check(page)
                rows = [(r.get("id"), r.get("version")) for r in page.records]
                add_listed(conn, [(rid, v) for rid, v in rows if rid is not None and isinstance(v, int)])
                if progress is not None and page.records:
                    last = page.records[-1].get("updatedAt")
                    progress.advance(resource, len(page.records), last if isinstance(last, str) else None)
            break
        except CursorExpiredError:
            # Unlike a sync, verify must see one whole listing: start over.
            restarts += 1
            if restarts > MAX_RESTARTS:
                raise
    report = VerifyReport(resource)
    compare(conn, report, sample)
    if progress is not None:
        progress.finish(resource, report.listed)
    end_listing(conn)
    return report
