import asyncio
import contextlib
import gc
import socket
import sqlite3
import time
import warnings
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from standardwebhooks import Webhook

from syncd.core.changes import Change
from syncd.feed.base import DeliveryState, SinkError
from syncd.feed.http import HttpSink
from syncd.feed.log import ConnectionChangeLog
from syncd.feed.notifier import ChangeNotifier
from syncd.feed.runner import OnFailure, SinkRunner, Start
from syncd.store import changelog

from .support import MIRROR, SECRET, Action, FakeClock, Receiver, Request, append_orders


def runner_for(
    sink: HttpSink, log: ConnectionChangeLog, notifier: ChangeNotifier, clock: FakeClock, **options: Any
) -> SinkRunner:
    options.setdefault("start", Start.BEGINNING)
    return SinkRunner(sink, log, notifier, sleep=clock.sleep, clock=clock.time, **options)


async def run_until(runner: SinkRunner, receiver: Receiver, condition: Any) -> None:
    task = asyncio.create_task(runner.run())
    try:
        await receiver.until(condition)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def seqs(requests: list[Request]) -> list[int]:
    return [r.seq for r in requests]


async def test_delivers_signed_changes_in_order(
    db: tuple[sqlite3.Connection, ConnectionChangeLog], receiver: Receiver
) -> None:
    conn, log = db
    notifier = ChangeNotifier()
    append_orders(conn, range(1, 6))
    clock = FakeClock()
    async with HttpSink("app", receiver.url, SECRET) as sink:
        runner = runner_for(sink, log, notifier, clock)
        task = asyncio.create_task(runner.run())
        await receiver.until(lambda: len(receiver.delivered) == 5)
        # New changes are picked up when the writer notifies.
        append_orders(conn, [6, 7], notifier=notifier)
        await receiver.until(lambda: runner.state.delivered == 7)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert seqs(receiver.requests) == [1, 2, 3, 4, 5, 6, 7]
    for request in receiver.requests:
        assert request.verified
        assert request.webhook_id == f"{MIRROR}-{request.seq}"
        assert request.content_type == "application/json"
        assert request.body["event"] == "order.created"
        assert request.body["mirror"] == MIRROR
    assert changelog.offset(conn, "app") == 7
    assert runner.state.delivered == 7
    assert runner.state.state is DeliveryState.OK
    assert clock.delays == []


def fail_seq_2(action: Action, times: int = 3) -> Any:
    return lambda request, attempt: action if request.seq == 2 and attempt <= times else None


@pytest.mark.parametrize(
    ("action", "reason"),
    [
        (500, "HTTP 500: failed 500"),
        (404, "HTTP 404"),
        (302, "HTTP 302"),
        ("hang", "no answer within"),
        (("huge", 500), "HTTP 500: xxxx"),
    ],
)
async def test_failures_are_retried_with_backoff_then_delivered_in_order(
    db: tuple[sqlite3.Connection, ConnectionChangeLog], receiver: Receiver, action: Action, reason: str
) -> None:
    conn, log = db
    append_orders(conn, range(1, 4))
    receiver.decide = fail_seq_2(action)
    clock = FakeClock()
    reasons: list[str | None] = []

    async def record(_: float) -> None:
        reasons.append(runner.state.last_error)

    clock.on_sleep = record
    # A short whole-request timeout for the hanging receiver; a huge body must not be read
    # to its end (that would take far longer than this timeout).
    async with HttpSink("app", receiver.url, SECRET, timeout=3.0 if action != "hang" else 1.0) as sink:
        runner = runner_for(sink, log, ChangeNotifier(), clock)
        await run_until(runner, receiver, lambda: runner.state.delivered == 3)
    assert seqs(receiver.delivered) == [1, 2, 3]
    assert seqs(receiver.requests) == [1, 2, 2, 2, 2, 3]
    assert {r.webhook_id for r in receiver.requests if r.seq == 2} == {f"{MIRROR}-2"}
    assert all(r.verified for r in receiver.requests)
    # Exponential, jittered upwards by at most a quarter.
    assert len(clock.delays) == 3
    for delay, base in zip(clock.delays, [1.0, 2.0, 4.0], strict=True):
        assert base <= delay <= base * 1.25
    assert all(r is not None and reason in r and "seq 2" in r for r in reasons)
    assert changelog.offset(conn, "app") == 3
    assert runner.state.state is DeliveryState.OK
    assert runner.state.attempts == 0
    assert runner.state.last_error is not None


async def test_connection_refused_is_retried_until_the_receiver_is_back(
    db: tuple[sqlite3.Connection, ConnectionChangeLog],
) -> None:
    conn, log = db
    append_orders(conn, range(1, 4))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    receiver = Receiver()
    clock = FakeClock()
    errors: list[str | None] = []

    async def come_back(_: float) -> None:
        errors.append(runner.state.last_error)
        if len(clock.delays) == 4:
            await receiver.start(port)

    clock.on_sleep = come_back
    try:
        async with HttpSink("app", f"http://127.0.0.1:{port}/hook", SECRET) as sink:
            runner = runner_for(sink, log, ChangeNotifier(), clock)
            await run_until(runner, receiver, lambda: runner.state.delivered == 3)
    finally:
        await receiver.stop()
    assert seqs(receiver.requests) == [1, 2, 3]
    assert all(e is not None and "ConnectError" in e for e in errors)
    assert len(clock.delays) == 4


async def test_a_huge_2xx_body_is_not_read_and_the_change_is_delivered(
    db: tuple[sqlite3.Connection, ConnectionChangeLog], receiver: Receiver
) -> None:
    conn, log = db
    append_orders(conn, [1, 2])
    receiver.decide = lambda request, attempt: ("huge", 200)
    clock = FakeClock()
    async with HttpSink("app", receiver.url, SECRET, timeout=5.0) as sink:
        runner = runner_for(sink, log, ChangeNotifier(), clock)
        await run_until(runner, receiver, lambda: runner.state.delivered == 2)
    assert seqs(receiver.requests) == [1, 2]
    assert clock.delays == []


async def test_skip_moves_a_change_to_dead_letters_after_max_attempts(
    db: tuple[sqlite3.Connection, ConnectionChangeLog], receiver: Receiver
) -> None:
    conn, log = db
    append_orders(conn, range(1, 5))
    receiver.decide = fail_seq_2(500, times=1000)
    clock = FakeClock()
    async with HttpSink("app", receiver.url, SECRET) as sink:
        runner = runner_for(sink, log, ChangeNotifier(), clock, on_failure=OnFailure.SKIP, max_attempts=3)
        await run_until(runner, receiver, lambda: runner.state.delivered == 4)
    assert seqs(receiver.delivered) == [1, 3, 4]
    assert seqs(receiver.requests) == [1, 2, 2, 2, 3, 4]
    assert len(clock.delays) == 2  # no wait after the last attempt: the change is given up
    [dead] = changelog.sink_dead_letters(conn, "app")
    assert (dead.seq, dead.change.event) == (2, "order.created")
    assert "HTTP 500" in dead.reason
    assert changelog.offset(conn, "app") == 4
    assert runner.state.dead_letters == 1
    assert runner.state.state is DeliveryState.OK


async def test_block_keeps_the_order_and_says_blocked(
    db: tuple[sqlite3.Connection, ConnectionChangeLog], receiver: Receiver
) -> None:
    conn, log = db
    append_orders(conn, range(1, 4))
    receiver.decide = fail_seq_2(503, times=6)
    clock = FakeClock()
    states: list[tuple[DeliveryState, int]] = []

    async def record(_: float) -> None:
        states.append((runner.state.state, runner.state.attempts))
        # Nothing after the failing change goes out while it fails.
        assert seqs(receiver.delivered) == [1]

    clock.on_sleep = record
    async with HttpSink("app", receiver.url, SECRET) as sink:
        runner = runner_for(sink, log, ChangeNotifier(), clock, max_attempts=3)
        await run_until(runner, receiver, lambda: runner.state.delivered == 3)
    assert states == [
        (DeliveryState.RETRYING, 1),
        (DeliveryState.RETRYING, 2),
        (DeliveryState.BLOCKED, 3),
        (DeliveryState.BLOCKED, 4),
        (DeliveryState.BLOCKED, 5),
        (DeliveryState.BLOCKED, 6),
    ]
    assert seqs(receiver.delivered) == [1, 2, 3]
    assert changelog.sink_dead_letters(conn, "app") == []


async def test_a_restart_resumes_from_the_committed_offset_with_the_same_ids(
    db: tuple[sqlite3.Connection, ConnectionChangeLog], receiver: Receiver
) -> None:
    conn, log = db
    append_orders(conn, range(1, 6))
    # The first process dies while seq 3 is in flight.
    receiver.decide = lambda request, attempt: "hang" if request.seq == 3 and attempt == 1 else None
    clock = FakeClock()
    async with HttpSink("app", receiver.url, SECRET) as sink:
        first = runner_for(sink, log, ChangeNotifier(), clock, batch_size=2)
        await run_until(first, receiver, lambda: seqs(receiver.requests)[-1:] == [3])
    assert changelog.offset(conn, "app") == 2
    before = list(receiver.requests)
    # A new runner and sink over the same store, as after a restart.
    async with HttpSink("app", receiver.url, SECRET) as sink:
        second = runner_for(sink, log, ChangeNotifier(), clock, batch_size=2)
        await run_until(second, receiver, lambda: second.state.delivered == 5)
    again = receiver.requests[len(before) :]
    assert seqs(again) == [3, 4, 5]
    assert again[0].webhook_id == before[-1].webhook_id == f"{MIRROR}-3"
    assert again[0].body == before[-1].body
    assert changelog.offset(conn, "app") == 5


async def test_a_sink_down_for_an_hour_loses_nothing_and_catches_up(
    db: tuple[sqlite3.Connection, ConnectionChangeLog], receiver: Receiver
) -> None:
    conn, log = db
    notifier = ChangeNotifier()
    append_orders(conn, range(1, 11))
    clock = FakeClock()
    receiver.decide = lambda request, attempt: 503 if clock.elapsed < 3600 else None
    next_id = iter(range(11, 100_000))

    async def keep_changing(_: float) -> None:
        # The shop keeps going while the sink is down.
        append_orders(conn, [next(next_id) for _ in range(25)], notifier=notifier)

    clock.on_sleep = keep_changing
    async with HttpSink("app", receiver.url, SECRET) as sink:
        runner = runner_for(sink, log, notifier, clock)
        task = asyncio.create_task(runner.run())
        await receiver.until(
            lambda: bool(receiver.delivered) and runner.state.delivered == changelog.head(conn)
        )
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    head = changelog.head(conn)
    assert clock.elapsed >= 3600
    assert max(clock.delays) == 300.0  # the backoff is capped at five minutes
    assert len(clock.delays) < 25
    assert seqs(receiver.delivered) == list(range(1, head + 1))  # every change, once, in order
    # Everything was taken: past retention the log can be emptied.
    assert changelog.prune(conn, before_at="9999", keep_after_seq=changelog.offset(conn, "app") or 0) == head
    assert changelog.read_after(conn, 0, 10) == []


def test_a_bad_secret_fails_at_construction() -> None:
    with pytest.raises(ValueError, match=r"sink 'app'.*base64"):
        HttpSink("app", "http://127.0.0.1:1/hook", "whsec_not base64!")


async def test_deliver_reports_how_many_went_through(
    db: tuple[sqlite3.Connection, ConnectionChangeLog], receiver: Receiver
) -> None:
    conn, _ = db
    append_orders(conn, range(1, 4))
    batch = changelog.read_after(conn, 0, 10)
    receiver.decide = lambda request, attempt: 500 if request.seq == 3 else None
    async with HttpSink("app", receiver.url, SECRET) as sink:
        with pytest.raises(SinkError) as failed:
            await sink.deliver(batch)
    assert failed.value.delivered == 2
    assert failed.value.sink == "app"
    assert "seq 3: HTTP 500" in failed.value.reason


# -- the client's behaviour, each against a real server on loopback --------------------------


@contextlib.asynccontextmanager
async def serving(handler: Any) -> AsyncIterator[str]:
    """`handler` answering every method and path on 127.0.0.1; yields the base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def one_change(conn: sqlite3.Connection) -> list[Change]:
    append_orders(conn, [1])
    return changelog.read_after(conn, 0, 1)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("shared", [False, True])
async def test_a_redirect_is_a_failure_and_is_not_followed(
    db: tuple[sqlite3.Connection, ConnectionChangeLog], status: int, shared: bool
) -> None:
    conn, _ = db
    batch = one_change(conn)
    paths: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        paths.append(request.path)
        if request.path == "/hook":
            return web.Response(status=status, headers={"Location": "/moved"})
        return web.Response(status=200)

    async with serving(handle) as base, contextlib.AsyncExitStack() as stack:
        # A caller's session follows redirects by default; the sink still does not.
        client = await stack.enter_async_context(aiohttp.ClientSession()) if shared else None
        async with HttpSink("app", f"{base}/hook", SECRET, client=client) as sink:
            with pytest.raises(SinkError) as failed:
                await sink.deliver(batch)
    assert paths == ["/hook"]
    assert failed.value.reason == f"seq 1: HTTP {status}"
    assert failed.value.delivered == 0


async def test_the_response_body_is_read_only_up_to_the_cap(
    db: tuple[sqlite3.Connection, ConnectionChangeLog],
) -> None:
    conn, _ = db
    batch = one_change(conn)
    written = 0
    peers: list[int] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        nonlocal written
        peers.append(request.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]
        response = web.StreamResponse(status=500)
        await response.prepare(request)
        with contextlib.suppress(ConnectionError, RuntimeError):
            for _ in range(16384):  # 1 GiB
                await response.write(b"y" * 65536)
                written += 65536
        return response

    async with serving(handle) as base, HttpSink("app", f"{base}/hook", SECRET, timeout=20) as sink:
        for _ in range(2):
            with pytest.raises(SinkError) as failed:
                await sink.deliver(batch)
            assert failed.value.reason == "seq 1: HTTP 500: " + "y" * 200
    # The sink stopped reading at 16 KiB and dropped the connection: the server could write
    # only what the sockets' buffers hold, and each attempt needed a new connection.
    assert written < 64 * 2**20
    assert len(set(peers)) == 2


async def test_a_capped_body_of_exactly_the_cap_keeps_the_connection(
    db: tuple[sqlite3.Connection, ConnectionChangeLog],
) -> None:
    conn, _ = db
    batch = one_change(conn)
    peers: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]
        return web.Response(status=200, body=b"z" * 1000)

    async with serving(handle) as base:
        async with HttpSink("app", f"{base}/hook", SECRET, max_response_body=1000) as sink:
            for _ in range(3):
                await sink.deliver(batch)
    assert len(peers) == 3
    assert len(set(peers)) == 1


async def test_requests_share_one_keep_alive_connection_and_carry_the_headers(
    db: tuple[sqlite3.Connection, ConnectionChangeLog],
) -> None:
    conn, _ = db
    append_orders(conn, range(1, 6))
    batch = changelog.read_after(conn, 0, 10)
    seen: list[tuple[int, dict[str, str], bytes]] = []

    async def handle(request: web.Request) -> web.Response:
        port = request.transport.get_extra_info("peername")[1]  # type: ignore[union-attr]
        seen.append((port, {k.lower(): v for k, v in request.headers.items()}, await request.read()))
        # A receiver's cookie is not sent back.
        return web.Response(status=204, headers={"Set-Cookie": "session=abc; Path=/"})

    async with serving(handle) as base:
        # By name: a cookie jar keeps no cookies from a bare IP address.
        url = base.replace("127.0.0.1", "localhost") + "/hook"
        async with HttpSink("app", url, SECRET, user_agent="syncd-feed/test") as sink:
            await sink.deliver(batch)
    assert len({port for port, _, _ in seen}) == 1
    for (_, headers, raw), change in zip(seen, batch, strict=True):
        assert raw == change.to_json()
        assert headers["content-type"] == "application/json"
        assert headers["user-agent"] == "syncd-feed/test"
        assert headers["accept-encoding"] == "identity"
        assert headers["webhook-id"] == f"{MIRROR}-{change.seq}"
        assert "cookie" not in headers
        assert Webhook(SECRET).verify(raw, headers)["seq"] == change.seq


async def test_the_timeout_bounds_a_receiver_holding_the_response_head(
    db: tuple[sqlite3.Connection, ConnectionChangeLog],
) -> None:
    conn, _ = db
    batch = one_change(conn)
    release = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        await release.wait()
        return web.Response(status=200)

    async with serving(handle) as base, HttpSink("app", f"{base}/hook", SECRET, timeout=0.5) as sink:
        started = time.monotonic()
        with pytest.raises(SinkError) as failed:
            await sink.deliver(batch)
        elapsed = time.monotonic() - started
        release.set()
    assert failed.value.reason == "seq 1: no answer within 0.5 s"
    assert 0.5 <= elapsed < 5


async def test_the_timeout_bounds_a_receiver_trickling_its_body(
    db: tuple[sqlite3.Connection, ConnectionChangeLog],
) -> None:
    conn, _ = db
    batch = one_change(conn)

    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        response.content_length = 1000
        await response.prepare(request)
        with contextlib.suppress(ConnectionError, RuntimeError):
            for _ in range(1000):  # every read gets a byte well within any per-read timeout
                await response.write(b"x")
                await asyncio.sleep(0.02)
        return response

    async with serving(handle) as base, HttpSink("app", f"{base}/hook", SECRET, timeout=0.5) as sink:
        started = time.monotonic()
        with pytest.raises(SinkError, match=r"seq 1: no answer within 0\.5 s$"):
            await sink.deliver(batch)
        assert time.monotonic() - started < 5


async def test_connection_refused_names_the_receiver_never_the_secret(
    db: tuple[sqlite3.Connection, ConnectionChangeLog],
) -> None:
    conn, _ = db
    batch = one_change(conn)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with HttpSink("app", f"http://127.0.0.1:{port}/hook", SECRET, timeout=5) as sink:
        with pytest.raises(SinkError) as failed:
            await sink.deliver(batch)
    reason = failed.value.reason
    assert reason.startswith("seq 1: ConnectError: ")
    assert f"127.0.0.1:{port}" in reason
    assert SECRET not in reason
    assert SECRET.removeprefix("whsec_") not in reason


async def test_the_environments_proxy_is_used(
    db: tuple[sqlite3.Connection, ConnectionChangeLog], monkeypatch: pytest.MonkeyPatch
) -> None:
    conn, _ = db
    batch = one_change(conn)
    targets: list[tuple[str, str]] = []

    async def proxy(request: web.Request) -> web.Response:
        targets.append((request.host, request.path))
        return web.Response(status=204)

    async with serving(proxy) as base:
        for name in ("NO_PROXY", "no_proxy", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", base)
        async with HttpSink("app", "http://receiver.invalid/hook", SECRET) as sink:
            await sink.deliver(batch)
        monkeypatch.setenv("NO_PROXY", "receiver.invalid")
        async with HttpSink("app", "http://receiver.invalid/hook", SECRET, timeout=5) as sink:
            with pytest.raises(SinkError, match="ConnectError"):
                await sink.deliver(batch)
    assert targets == [("receiver.invalid", "/hook")]


def test_a_sink_is_made_outside_an_event_loop_and_opens_nothing() -> None:
    sink = HttpSink("app", "http://127.0.0.1:9/hook", SECRET)
    assert sink._client is None
    asyncio.run(sink.aclose())


async def test_a_closed_sink_leaves_no_unclosed_session(
    db: tuple[sqlite3.Connection, ConnectionChangeLog], receiver: Receiver
) -> None:
    conn, _ = db
    batch = one_change(conn)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sink = HttpSink("app", receiver.url, SECRET)
        await sink.deliver(batch)
        await sink.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            await sink.deliver(batch)
        del sink
        gc.collect()
    assert [str(w.message) for w in caught] == []
