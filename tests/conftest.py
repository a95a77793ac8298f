"""Fixtures shared across the test packages: a store, a writer thread over it, and
stamina's test mode.

- `store`: a Store on a fresh file in the test's tmp_path, closed after the test.
- `writer`: a started Writer over a fresh file in tmp_path, stopped after the test.
- `no_backoff`: retries never sleep, at most `retry_attempts` attempts (3; a module that
  needs more overrides the `retry_attempts` fixture). Use it with
  `pytestmark = pytest.mark.usefixtures("no_backoff")`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import stamina

from syncd.store.db import Store
from syncd.store.writer import Writer


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "mirror.db")
    yield s
    s.close()


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[Writer]:
    w = Writer(lambda: Store(tmp_path / "mirror.db"))
    w.start()
    yield w
    w.stop()


@pytest.fixture
def retry_attempts() -> int:
    return 3


@pytest.fixture
def no_backoff(retry_attempts: int) -> Iterator[None]:
    with stamina.set_testing(True, attempts=retry_attempts, cap=True):
        yield


@pytest.fixture
def restore_root() -> Iterator[None]:
    """Root logger handlers and level as they were: setup_logging replaces them."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
