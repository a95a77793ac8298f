"""`syncd replay --sink NAME`: a sink's dead letters delivered again, through the sink the
config describes, oldest first, each marked with how its replay went.

Dead letters are changes a `skip` sink gave up on; the runner has moved past them, so this
delivers them out of the log's order, one at a time (a handler dedupes on seq or webhook-id
as for any redelivery: a dead letter keeps its seq). A failed replay leaves the letter open
(`changelog.REPLAY_FAILED`), so the next run tries it again. Letters are read in pages by
id, so memory stays flat however many there are. It works while the daemon runs: the
runner never touches a sink's dead letters once written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from syncd.feed.base import Sink, SinkError
from syncd.store import changelog
from syncd.store.changelog import SinkDeadLetter
from syncd.store.db import Store
from syncd.store.writer import Writer, running_writer

#: Dead letters read at a time.
PAGE: Final = 100


@dataclass(frozen=True, slots=True)
class SinkReplayResult:
    dead_letter_id: int
    seq: int
    event: str
    delivered: bool
    reason: str | None = None


def _page(store: Store, sink: str, after_id: int) -> list[SinkDeadLetter]:
    return changelog.open_sink_dead_letters(store.conn, sink, after_id=after_id, limit=PAGE)


def _mark(store: Store, dead_letter_id: int, outcome: str) -> None:
    with store.db.atomic():
        changelog.mark_dead_letter_replayed(store.conn, dead_letter_id, outcome)


async def replay_sink(writer: Writer, sink: Sink) -> list[SinkReplayResult]:
    """Deliver each open dead letter of `sink` and mark it delivered or failed, in id order;
    every letter is tried, whatever the ones before it did."""
    results: list[SinkReplayResult] = []
    after = 0
    while page := await writer.run(_page, sink.name, after):
        for letter in page:
            after = letter.id
            try:
                await sink.deliver([letter.change])
            except SinkError as exc:
                result = SinkReplayResult(letter.id, letter.seq, letter.change.event, False, exc.reason)
            except Exception as exc:  # a sink's own bug must not stop the other letters
                reason = f"{type(exc).__name__}: {exc}"
                result = SinkReplayResult(letter.id, letter.seq, letter.change.event, False, reason)
            else:
                result = SinkReplayResult(letter.id, letter.seq, letter.change.event, True)
            outcome = changelog.REPLAY_DELIVERED if result.delivered else changelog.REPLAY_FAILED
            await writer.run(_mark, letter.id, outcome)
            results.append(result)
    return results


async def replay_sink_at(path: str | Path, sink: Sink) -> list[SinkReplayResult]:
    with running_writer(path) as writer:
        return await replay_sink(writer, sink)
