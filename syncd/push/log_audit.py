"""The audit trail of `syncd receive`, which has no store: one JSON line per answer on the
process's log stream (stderr: the journal under systemd), whatever `log.format` is, so a
log shipper can parse it as it is. Shaped like the JSON log lines (`ts`, `level`,
`logger`) with the row under `audit`.

Off the answer's path, as the store's trail is: rows wait in a bounded buffer and a
background task writes them in batches (the logging module's formatter, filters and a
flush per line cost about 300 us a delivery, more than the rest of the receiver). The
oldest rows go first when the buffer is full, counted in `dropped`. The receiver samples
rejections before they get here (RejectionSampler), so one client cannot flood the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import IO, Final

import orjson

from syncd.metrics import Metrics
from syncd.push.audit import AuditBuffer, AuditRow
from syncd.timefmt import format_epoch

_FIELDS: Final = AuditRow._fields


def audit_line(row: AuditRow) -> bytes:
    entry = dict(zip(_FIELDS, row, strict=True))
    entry["at"] = format_epoch(row.at)
    # JSON escapes control characters: a hostile path or event id cannot put a line break
    # or an escape sequence into the log.
    return orjson.dumps({"ts": entry["at"], "level": "INFO", "logger": "syncd.audit", "audit": entry}) + b"\n"


class LogAudit:
    def __init__(
        self,
        stream: IO[bytes] | None = None,
        *,
        max_rows: int = 10_000,
        interval: float = 0.2,
        metrics: Metrics | None = None,
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr.buffer
        self._buffer = AuditBuffer(max_rows, metrics)
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.written = 0

    @property
    def dropped(self) -> int:
        return self._buffer.dropped

    def record(self, row: AuditRow) -> None:
        self._buffer.add(row)

    def flush(self) -> None:
        rows = self._buffer.take()
        if not rows:
            return
        try:
            self._stream.write(b"".join(audit_line(row) for row in rows))
            self._stream.flush()
        except (OSError, ValueError):
            # A closed or full log must not take the receiver down; the loss is counted.
            self._buffer.lost(len(rows))
            return
        self.written += len(rows)

    async def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="syncd-audit-log")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.flush()

    async def _run(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self._interval)
            self.flush()
