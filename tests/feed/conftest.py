"""The exec sink's tests run on both event loops the daemon may run on: asyncio's own and
uvloop (`syncd run` picks it when installed), since how a loop spawns and reaps processes
is what the sink depends on. Every other feed test keeps asyncio's loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    if item.path.name == "test_command.py":
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}
