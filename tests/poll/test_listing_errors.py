"""A listing that fails while pages are still being committed reports its own error."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from syncd.api import Page
from syncd.errors import ApiTransientError
from syncd.poll.poller import Poller
from syncd.poll.transactions import commit_page
from syncd.store.db import Store
from syncd.store.writer import Writer
from tests.poll_helpers import make_config


def _record(i: int) -> dict[str, Any]:
    return {
        "id": i,
        "customerId": 1,
        "status": "placed",
        "items": [],
        "total": 1.0,
        "version": 1,
        "createdAt": "2024-01-01T00:00:00.000Z",
        "updatedAt": "2024-01-01T00:00:00.000Z",
    }


class FailingListing:
    """Two pages, then the API fails."""

    async def list_pages(self, resource: str, *, since: str | None, limit: int) -> AsyncGenerator[Page, None]:
        yield Page([_record(1)], True, "c1")
        yield Page([_record(2)], True, "c2")
        raise ApiTransientError("GET /orders: HTTP 503")


class CommitsFail(Writer):
    """A writer whose page commits fail a moment after they are submitted (the store went
    away), so the listing's error comes first; other work runs."""

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        if fn is not commit_page:
            return super().submit(fn, *args, **kwargs)
        failed: concurrent.futures.Future[Any] = concurrent.futures.Future()
        threading.Timer(0.2, failed.set_exception, (OSError("disk I/O error"),)).start()
        return failed


@pytest.fixture
def failing_writer(tmp_path: Path) -> Iterator[Writer]:
    w = CommitsFail(lambda: Store(tmp_path / "mirror.db"))
    w.start()
    yield w
    w.stop()


async def test_a_failed_commit_does_not_hide_the_listing_error(
    tmp_path: Path, failing_writer: Writer
) -> None:
    cfg = make_config("http://127.0.0.1:1", tmp_path / "mirror.db")
    poller = Poller(FailingListing(), failing_writer, cfg)  # type: ignore[arg-type]
    with pytest.raises(ApiTransientError, match="HTTP 503"):
        await asyncio.wait_for(poller.poll("orders"), 10)
