"""`syncd replay`: dead letters re-parsed and re-applied through the inbox worker's own logic."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from syncd.core.records import EventOutcome
from syncd.push.inbox_worker import commit_outcomes
from syncd.push.processor import EventProcessor, InboxItem, RecordFetcher
from syncd.store import dead_letters
from syncd.store.db import Store
from syncd.store.writer import Writer


def load_dead_letters(store: Store, ids: Sequence[int] | None) -> list[InboxItem]:
    """Dead letters to replay: the given ids, or every open one (the definition `syncd
    status` counts by, see syncd.store.dead_letters.OPEN_DEAD_LETTER_SQL)."""
    return [
        InboxItem(
            event_id,
            received_at,
            body,
            dead_letter_id=dl_id,
            resource=resource if source == "poll" else None,
        )
        for dl_id, event_id, received_at, body, source, resource in dead_letters.load_letters(store.conn, ids)
    ]


@dataclass(frozen=True, slots=True)
class ReplayResult:
    dead_letter_id: int
    event_id: str | None
    outcome: EventOutcome
    reason: str | None
    resource: str | None = None
    record_id: str | None = None


async def replay_dead_letters(
    writer: Writer,
    client: RecordFetcher | None,
    *,
    fetch_thin: bool,
    ids: Sequence[int] | None = None,
    clock: Callable[[], float] = time.time,
) -> list[ReplayResult]:
    """Re-parse and re-apply dead letters through the worker's own logic. Ones still invalid
    stay dead letters (marked with the replay's outcome); a failed fetch leaves them as they were."""
    letters = await writer.run(load_dead_letters, ids)
    if not letters:
        return []
    settled = await EventProcessor(client, fetch_thin=fetch_thin).prepare(letters)
    outcomes = await writer.run(commit_outcomes, settled, clock())
    return [
        ReplayResult(s.item.dead_letter_id or 0, s.item.event_id, outcome, s.reason, s.resource, s.record_id)
        for s, outcome in zip(settled, outcomes, strict=True)
    ]
