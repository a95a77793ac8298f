"""Fixtures of the feed's tests: a change log on a real SQLite file (`db`) and a signature-
checking HTTP receiver on loopback (`receiver`).

The exec sink's tests run on both event loops the daemon may run on: asyncio's own and
uvloop (`syncd run` picks it when installed), since how a loop spawns and reaps processes
is what the sink depends on. Every other feed test keeps asyncio's loop."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path

import pytest
import uvloop

from syncd.feed.log import ConnectionChangeLog

from .support import Receiver, open_log


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[sqlite3.Connection, ConnectionChangeLog]]:
    conn, log = open_log(tmp_path / "mirror.db")
    yield conn, log
    conn.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    if item.path.name == "test_command.py":
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}
