"""The signals a syncd process answers (SIGTERM and SIGINT stop it, SIGHUP reloads it),
handled on its event loop for as long as it runs."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@contextlib.contextmanager
def signal_handlers(
    loop: asyncio.AbstractEventLoop, on_signal: Callable[[signal.Signals], None]
) -> Iterator[None]:
    """`on_signal(sig)` on the loop for each of HANDLED until the block ends."""
    installed: list[signal.Signals] = []
    for sig in HANDLED:
        try:
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):
            # Not the main thread (a loop run in another thread): no signal handling.
            break
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
