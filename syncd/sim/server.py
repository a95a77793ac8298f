"""Running the simulator: in a background thread (tests, the demo) or in the foreground (CLI).

`running_simulator()` starts uvicorn on 127.0.0.1 with a free port in a thread that owns the
simulator's event loop; `SimHandle.call` runs a function on that loop so tests can read ground
truth and drive the workload without racing the server. `ThreadedServer` does the same for any
ASGI app (tests use it for webhook receivers).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import uvicorn

from syncd.sim.app import create_app
from syncd.sim.clock import Clock
from syncd.sim.config import SimConfig
from syncd.sim.simulator import Simulator

T = TypeVar("T")
ASGIApp = Any


def uvicorn_config(app: ASGIApp, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        log_level="warning",
        access_log=False,
        ws="none",
        # A request parked by the hang fault must not hold shutdown for its full duration.
        timeout_graceful_shutdown=1,
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now, for a server that must know its port before
    it starts (a daemon's config, a webhook URL registered ahead)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def bound_port(server: uvicorn.Server) -> int:
    for listener in server.servers:
        for sock in listener.sockets:
            port: int = sock.getsockname()[1]
            return port
    raise RuntimeError("the server has no listening socket")


class ThreadedServer:
    """An ASGI app served by uvicorn on its own event loop in a daemon thread."""

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = uvicorn.Server(uvicorn_config(app, host, port))
        self._host = host
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._run, name="uvicorn", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # surfaced to the starting thread
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if task.done():
                await task
                raise RuntimeError("uvicorn stopped during startup")
            await asyncio.sleep(0.005)
        self.port = bound_port(self._server)
        self._ready.set()
        await task

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"server did not start within {timeout} s")
        if self._error is not None or not self.port:
            raise RuntimeError("server failed to start") from self._error

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"server on port {self.port} did not stop within {timeout} s")

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 30.0) -> T:
        """Run `fn(*args)` on the server's loop and return its result."""

        async def run() -> T:
            return fn(*args)

        return self.run(run(), timeout=timeout)

    def run(self, coro: Awaitable[T], timeout: float = 30.0) -> T:
        """Await `coro` on the server's loop and return its result."""
        assert self.loop is not None

        async def wrapper() -> T:
            return await coro

        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(wrapper(), self.loop)
        return future.result(timeout)


class SimHandle(ThreadedServer):
    def __init__(self, config: SimConfig | None = None, *, clock: Clock | None = None, port: int = 0) -> None:
        self.simulator = Simulator(config, clock=clock)
        super().__init__(create_app(self.simulator), port=port)

    @property
    def api_key(self) -> str:
        return self.simulator.api_key

    def step(self, count: int = 1) -> int:
        return self.call(self.simulator.step, count)

    def truth(self, resource: str | None = None) -> dict[str, dict[str, int]]:
        return self.call(self.simulator.truth, resource)

    def control(self, command: dict[str, Any]) -> dict[str, Any]:
        return self.run(self.simulator.control(command))

    def stop(self, timeout: float = 10.0) -> None:
        if self.loop is not None:
            # Let requests parked by the hang fault go first, so shutdown is not held by them.
            with contextlib.suppress(RuntimeError):  # the loop already closed
                self.loop.call_soon_threadsafe(self.simulator.begin_shutdown)
        super().stop(timeout)


@contextlib.contextmanager
def running_simulator(config: SimConfig | None = None, *, clock: Clock | None = None) -> Iterator[SimHandle]:
    handle = SimHandle(config, clock=clock)
    handle.start()
    try:
        yield handle
    finally:
        handle.stop()
