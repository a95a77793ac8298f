"""The signals a syncd process answers (SIGTERM and SIGINT stop it, SIGHUP reloads it),
handled on its event loop for as long as it runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

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


class StopSignals:
    """SIGTERM and SIGINT: the first asks for a graceful stop (`request_stop`); a second,
    from an operator who will not wait for it, ends the process at once with `exit_code`."""

    def __init__(self, request_stop: Callable[[], None], exit_code: int) -> None:
        self._request_stop = request_stop
        self._exit_code = exit_code
        self.received = 0

    def __call__(self, sig: signal.Signals) -> None:
        self.received += 1
        if self.received > 1:
            log.warning("%s again: exiting now without a graceful stop", sig.name)
            logging.shutdown()
            os._exit(self._exit_code)
        log.info("%s received", sig.name)
        self._request_stop()
