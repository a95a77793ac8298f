"""The audit trail of `syncd receive` as JSON lines: one per answer, nothing a hostile
request sends can break a line, the buffer is bounded, and stop writes what is buffered."""

from __future__ import annotations

import io
import json

from syncd.push.audit import AuditRow
from syncd.push.log_audit import LogAudit


def row(n: int, path: str = "/webhooks/petstore", event_id: str | None = "evt") -> AuditRow:
    return AuditRow(1_700_000_000.0 + n, "127.0.0.1", "POST", path, 200, "accepted", event_id, 10)


async def test_one_json_line_per_row_written_on_stop() -> None:
    out = io.BytesIO()
    audit = LogAudit(out, interval=3600)
    await audit.start()
    audit.record(row(0, path="/x\n\x1b[31m", event_id="evt\r\nforged"))
    audit.record(row(1))
    assert out.getvalue() == b""
    await audit.stop()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["logger"] == "syncd.audit"
    assert first["audit"]["path"] == "/x\n\x1b[31m"
    assert first["audit"]["event_id"] == "evt\r\nforged"
    assert first["audit"]["at"] == "2023-11-14T22:13:20.000Z"
    assert (audit.written, audit.dropped) == (2, 0)


async def test_the_buffer_is_bounded_dropping_the_oldest() -> None:
    out = io.BytesIO()
    audit = LogAudit(out, max_rows=3, interval=3600)
    for n in range(5):
        audit.record(row(n))
    audit.flush()
    ats = [json.loads(line)["audit"]["at"] for line in out.getvalue().splitlines()]
    assert len(ats) == 3
    assert ats[0].startswith("2023-11-14T22:13:22")
    assert (audit.written, audit.dropped) == (3, 2)


def test_a_closed_stream_counts_the_loss() -> None:
    out = io.BytesIO()
    audit = LogAudit(out)
    audit.record(row(0))
    out.close()
    audit.flush()
    assert (audit.written, audit.dropped) == (0, 1)
