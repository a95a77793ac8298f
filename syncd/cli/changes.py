"""`syncd changes`: the change log, printed or followed, for people (a table) and for
programs (`--json`: JSON Lines, one change per line, flushed as written).

`syncd changes --follow --json | my-handler` is a supported way to consume the feed, so
the follower behaves like a good pipeline citizen: SIGINT and SIGTERM end it with exit 0
after the line in hand is written whole, and a reader that goes away (the handler exited)
ends it quietly with exit 0, noticed even while the log is quiet.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import IO, Final

import click
import orjson

from syncd.cli.common import config_option, load
from syncd.contract import RESOURCES
from syncd.core.changes import Change, ChangeKind
from syncd.errors import StoreError
from syncd.ops.change_reader import FOLLOW_INTERVAL, ChangeQuery, open_change_log, pruned_gap, read_changes

#: (title, width) of each column but the last (the changed fields, as wide as it needs).
#: The table streams, a row per change as it is read, so the widths are fixed rather than
#: measured from every row (which would mean holding the whole log in memory).
_COLUMNS: Final = (
    ("SEQ", 8),
    ("AT", 24),
    ("EVENT", 20),
    ("RESOURCE", 9),
    ("RECORD", 14),
    ("VERSION", 7),
    ("SOURCE", 7),
)
_CHANGED_WIDTH: Final = 80
_VALUE_WIDTH: Final = 24


def _printable(text: str) -> str:
    # Record values come from the API: a terminal must not act on control characters they hold.
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _value(value: object) -> str:
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return _cut(_printable(text), _VALUE_WIDTH)


def changed_summary(change: Change) -> str:
    """The fields a change changed, `field: from→to` each, cut to a line's worth."""
    if change.kind is ChangeKind.CREATED:
        return "(new record)"
    if change.kind is ChangeKind.DELETED:
        return "(gone from the API's listing)"
    if not change.changed:
        return "(same content)" if change.kind is ChangeKind.RESTORED else ""
    parts = [
        f"{_printable(name)}: {_value(diff.get('from'))}→{_value(diff.get('to'))}"
        for name, diff in change.changed.items()
    ]
    return _cut("; ".join(parts), _CHANGED_WIDTH)


def table_header() -> str:
    return " ".join(title.ljust(width) for title, width in _COLUMNS) + " CHANGED"


def table_row(change: Change) -> str:
    cells = (
        str(change.seq),
        change.at,
        change.event,
        change.resource,
        _printable(str(change.record_id)),
        str(change.version),
        change.source.value,
    )
    row = " ".join(_cut(cell, width).ljust(width) for cell, (_, width) in zip(cells, _COLUMNS, strict=True))
    return f"{row} {changed_summary(change)}".rstrip()


def _reader_gone(stream: IO[bytes]) -> Callable[[], bool]:
    """Whether the reading end of our stdout closed. A pipe's writer sees POLLERR then, so
    `| head -1` ends a quiet follower at once instead of at the next change; terminals and
    files never report it."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError):  # not a real file (click's test runner)
        return lambda: False
    poller = select.poll()
    poller.register(fd, 0)  # POLLERR and POLLHUP are always reported
    return lambda: bool(poller.poll(0))


@contextlib.contextmanager
def _stopped_by_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set `stop`, so the line being written is finished and the exit is
    clean; a second signal stops at once (a reader that stopped reading would otherwise keep
    a blocked write, and us, waiting)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise SystemExit(0)
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _quiet_broken_pipe() -> None:
    # The reader is gone: what Python would still flush at exit must not fail (and print a
    # traceback) again, so stdout becomes /dev/null (the recipe in Python's signal docs).
    devnull = os.open(os.devnull, os.O_WRONLY)
    with contextlib.suppress(OSError, ValueError):
        os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


@click.command("changes")
@config_option
@click.option(
    "--since",
    "since",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    metavar="SEQ",
    help="Print changes with a seq greater than SEQ.",
)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new changes until SIGINT/SIGTERM.")
@click.option(
    "--resource",
    "resources",
    type=click.Choice(RESOURCES),
    multiple=True,
    help="Only this resource (repeatable).",
)
@click.option(
    "--event",
    "events",
    metavar="PATTERN",
    multiple=True,
    help="Only events matching this fnmatch pattern, like 'order.*' (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="JSON Lines: one change per line, as sinks get it.")
@click.option("--limit", type=click.IntRange(min=1), default=None, metavar="N", help="Stop after N changes.")
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.001),
    default=FOLLOW_INTERVAL,
    hidden=True,
    help="Seconds between looks for new changes while following.",
)
def changes(
    config_path: str | None,
    since: int,
    follow: bool,
    resources: tuple[str, ...],
    events: tuple[str, ...],
    as_json: bool,
    limit: int | None,
    poll_interval: float,
) -> None:
    """Print the change log: every state the mirror committed, oldest first.

    Reads the store read-only, so it works while the daemon runs. With --json each line
    is one change as JSON (the shape sinks receive), flushed as it is written, so
    `syncd changes --follow --json | my-handler` feeds a handler in any language.
    """
    cfg = load(config_path, require_secrets=False)
    conn = open_change_log(cfg.store.path)
    query = ChangeQuery(since, resources or None, tuple(p for p in events if p))
    stop = threading.Event()
    out = sys.stdout.buffer
    try:
        gap = pruned_gap(conn, since)
        if gap is not None:
            click.echo(f"syncd: note: {gap.describe()}", err=True)
        with _stopped_by_signals(stop):
            _print(
                conn,
                query,
                out,
                as_json=as_json,
                follow=follow,
                limit=limit,
                stop=stop,
                interval=poll_interval,
            )
    except BrokenPipeError:
        _quiet_broken_pipe()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the change log of {cfg.store.path}: {exc}") from None
    finally:
        conn.close()


def _print(
    conn: sqlite3.Connection,
    query: ChangeQuery,
    out: IO[bytes],
    *,
    as_json: bool,
    follow: bool,
    limit: int | None,
    stop: threading.Event,
    interval: float,
) -> None:
    if not as_json:
        out.write(table_header().encode() + b"\n")
        out.flush()
    gone = _reader_gone(out)
    stream = read_changes(conn, query, follow=follow, stop=stop, interval=interval, alive=lambda: not gone())
    for printed, change in enumerate(stream, start=1):
        line = change.to_json() if as_json else table_row(change).encode()
        out.write(line + b"\n")
        # A line per flush: a handler at the other end of a pipe must not wait for a buffer.
        out.flush()
        if limit is not None and printed >= limit:
            return


commands = [changes]
