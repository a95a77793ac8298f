"""Progress of long listings: log lines with rate and an updatedAt-span estimate, a rich bar
on terminals."""

from __future__ import annotations

import io
import logging

import pytest
from rich.console import Console

from syncd.poll.progress import LogProgress, RichProgress, make_progress
from syncd.timefmt import format_epoch as utc_iso
from syncd.timefmt import to_epoch as parse_iso


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_log_lines_say_rate_and_estimate(caplog: pytest.LogCaptureFixture) -> None:
    wall = Clock(parse_iso("2024-01-11T00:00:00.000Z"))
    mono = Clock(100.0)
    progress = LogProgress(every=5.0, clock=mono, wall=wall)
    caplog.set_level(logging.INFO, logger="syncd.poll.progress")
    progress.start("orders", "first sync")
    # Records span 1 Jan to 10 Jan so far; "now" is 11 Jan: about 90% of the span.
    progress.advance("orders", 1000, "2024-01-01T00:00:00.000Z")
    mono.now += 10
    progress.advance("orders", 9000, "2024-01-10T00:00:00.000Z")
    mono.now += 1
    progress.advance("orders", 500, "2024-01-10T01:00:00.000Z")  # within `every`: no line
    mono.now += 1
    progress.finish("orders", 10500)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "orders: first sync listing started"
    assert lines[1] == "orders: 10000 records, 1,000/s, ~90% by updatedAt span, ~1s left (estimate)"
    assert lines[2] == "orders: listing done, 10500 records in 12.0s"
    assert len(lines) == 3


def test_without_timestamps_the_total_is_unknown(caplog: pytest.LogCaptureFixture) -> None:
    mono = Clock(0.0)
    progress = LogProgress(every=0.0, clock=mono)
    caplog.set_level(logging.INFO, logger="syncd.poll.progress")
    progress.start("customers", "full relist")
    mono.now = 2.0
    progress.advance("customers", 10, None)
    assert caplog.records[-1].getMessage() == "customers: 10 records, 5/s (total unknown: the API gives none)"


def test_rich_bar_on_a_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    bar = RichProgress(console)
    bar.start("orders", "first sync")
    bar.advance("orders", 500, utc_iso(0))
    bar.finish("orders", 500)
    text = out.getvalue()
    assert "orders (first sync)" in text
    assert "500 records, done" in text


def test_make_progress_picks_by_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(make_progress(io.StringIO()), LogProgress)
    assert isinstance(make_progress(Tty()), RichProgress)
