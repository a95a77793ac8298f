"""Receiver routing, settings, uvicorn config, the CLI, and durability across kill -9."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
import respx
from click.testing import CliRunner

from syncd.cli import main
from syncd.config import WebhookConfig, load_config
from syncd.push.admission import RateLimiter, resolve_client
from syncd.push.inbox_worker import InboxWorker
from syncd.push.receiver_app import uvicorn_config
from tests.webhook_support import PATH, SECRET, envelope, read_db, running_receiver, signed_headers


async def test_only_the_webhook_path_is_served(tmp_path: Path) -> None:
    async with running_receiver(tmp_path) as rx, httpx.AsyncClient() as client:
        base = f"http://{rx.host}:{rx.port}"
        for path in ("/", "/healthz", "/metrics", PATH + "/", PATH + "x"):
            response = await client.get(base + path)
            assert response.status_code == 404, path
        response = await client.get(rx.url)
        assert response.status_code == 405
        assert response.headers["allow"] == "POST"
        await rx.flush_audit()
        statuses = [r[0] for r in rx.query("SELECT status FROM _audit ORDER BY id")]
        assert statuses == [404] * 5 + [405]
        assert (
            rx.metrics.registry.get_sample_value(
                "syncd_webhook_requests_total", {"status": "404", "reason": "not_found"}
            )
            == 5
        )


async def test_acknowledged_then_duplicate(tmp_path: Path) -> None:
    async with running_receiver(tmp_path) as rx, httpx.AsyncClient() as client:
        body = envelope("evt_1")
        first = await client.post(rx.url, content=body, headers=signed_headers(body))
        again = await client.post(rx.url, content=body, headers=signed_headers(body))
        assert (first.json(), again.json()) == ({"status": "accepted"}, {"status": "duplicate"})
        stored = rx.query("SELECT headers FROM _inbox")
        assert len(stored) == 1
        assert "signature" not in stored[0][0].lower()
        assert rx.metrics.registry.get_sample_value("syncd_webhook_ack_seconds_count") == 2


async def test_store_that_cannot_commit_answers_503(tmp_path: Path) -> None:
    async with running_receiver(tmp_path) as rx, httpx.AsyncClient() as client:
        await rx.writer.run(lambda s: s.conn.execute("PRAGMA busy_timeout=20"))
        import sqlite3

        other = sqlite3.connect(rx.db_path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            body = envelope("evt_locked")
            response = await client.post(rx.url, content=body, headers=signed_headers(body))
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
        retry = await client.post(rx.url, content=body, headers=signed_headers(body))
        assert retry.json() == {"status": "accepted"}


def test_client_address_rules() -> None:
    trusted = WebhookConfig.model_validate({"trusted_proxies": ["10.0.0.0/8"]}).trusted_proxies
    assert resolve_client("192.0.2.1", "1.2.3.4", trusted) == "192.0.2.1"
    assert resolve_client("10.0.0.1", "1.2.3.4, 5.6.7.8", trusted) == "5.6.7.8"
    assert resolve_client("10.0.0.1", "1.2.3.4, 10.9.9.9", trusted) == "1.2.3.4"
    assert resolve_client("10.0.0.1", "10.1.1.1, 10.2.2.2", trusted) == "10.1.1.1"


def test_rate_limiter_refills_and_forgets_old_clients() -> None:
    limiter = RateLimiter(2.0, max_clients=2)
    assert [limiter.check("a", 0.0) for _ in range(3)] == [None, None, pytest.approx(0.5)]
    assert limiter.check("a", 0.5) is None
    limiter.check("b", 0.5)
    limiter.check("c", 0.5)  # evicts "a", the least recently seen
    assert limiter.check("a", 0.5) is None


def test_uvicorn_config_tls_and_socket_activation(tmp_path: Path) -> None:
    cfg = WebhookConfig.model_validate({"tls_cert": "/etc/c.pem", "tls_key": "/etc/k.pem"})
    config = uvicorn_config(object(), cfg, fd=3)  # type: ignore[arg-type]
    assert (config.fd, config.ssl_certfile, config.ssl_keyfile) == (3, "/etc/c.pem", "/etc/k.pem")
    assert config.proxy_headers is False
    plain = uvicorn_config(object(), WebhookConfig(), log_level="info")  # type: ignore[arg-type]
    assert (plain.host, plain.port, plain.fd, plain.ssl_certfile) == ("127.0.0.1", 8787, None, None)


# -- CLI -------------------------------------------------------------------------------------


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "syncd.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [api]
            base_url = "http://api.test/v1"
            [store]
            path = "{tmp_path / "mirror.db"}"
            [webhook]
            listen = "127.0.0.1:8787"
            """
        )
    )
    return path


def test_webhooks_register_writes_the_secret_0600_and_not_to_stdout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PETSTORE_API_KEY", "key")
    config = write_config(tmp_path)
    secret_file = tmp_path / "secret"
    with respx.mock(base_url="http://api.test/v1") as router:
        route = router.post("/webhooks").respond(
            201,
            json={
                "id": "wh_1",
                "url": "http://127.0.0.1:8787" + PATH,
                "events": ["order.created"],
                "secret": "whsec-xyz",
                "status": "active",
            },
        )
        result = CliRunner().invoke(
            main,
            [
                "webhooks",
                "register",
                "--config",
                str(config),
                "--events",
                "order.created",
                "--secret-file",
                str(secret_file),
            ],
        )
    assert result.exit_code == 0, result.output
    assert "whsec-xyz" not in result.output
    assert secret_file.read_text().strip() == "whsec-xyz"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    sent = route.calls.last.request
    assert b'"url":"http://127.0.0.1:8787/webhooks/petstore"' in sent.content.replace(b" ", b"")


def register_with_secret(config: Path, secret_file: Path, secret: str, *extra: str) -> str:
    with respx.mock(base_url="http://api.test/v1") as router:
        router.post("/webhooks").respond(
            201, json={"id": "wh_r", "url": "u", "events": ["order.created"], "secret": secret}
        )
        result = CliRunner().invoke(
            main,
            ["webhooks", "register", "--config", str(config), "--secret-file", str(secret_file), *extra],
        )
    assert result.exit_code == 0, result.output
    assert secret not in result.output
    return result.output


def test_registering_again_keeps_the_old_secret_for_rotation_unless_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PETSTORE_API_KEY", "key")
    config = write_config(tmp_path)
    secret_file = tmp_path / "secret"
    register_with_secret(config, secret_file, "first-secret")
    out = register_with_secret(config, secret_file, "second-secret")
    assert "now holds 2 secrets" in out
    assert secret_file.read_text().strip() == "first-secret,second-secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    # The config reads both, so deliveries signed by either endpoint verify.
    reading = tmp_path / "reading.toml"
    reading.write_text(config.read_text() + f'secret_file = "{secret_file}"\n')
    cfg = load_config(reading, env={"PETSTORE_API_KEY": "key"})
    assert cfg.secrets.webhook_secrets == ("first-secret", "second-secret")
    # Registering the same secret twice does not repeat it; --replace keeps only the new one.
    register_with_secret(config, secret_file, "second-secret")
    assert secret_file.read_text().strip() == "first-secret,second-secret"
    register_with_secret(config, secret_file, "third-secret", "--replace")
    assert secret_file.read_text().strip() == "third-secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("secret")] == ["secret"]  # no leftovers


def test_webhooks_register_wait_times_out_without_a_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PETSTORE_API_KEY", "key")
    config = write_config(tmp_path)
    with respx.mock(base_url="http://api.test/v1") as router:
        router.post("/webhooks").respond(201, json={"id": "wh_2", "url": "u", "events": [], "secret": "s"})
        result = CliRunner().invoke(
            main,
            ["webhooks", "register", "--config", str(config), "--show-secret", "--wait", "--timeout", "0"],
        )
    assert result.exit_code == 1
    assert "secret: s" in result.output
    assert "wh_2" in result.output
    assert "webhook.test" in result.output


def test_webhooks_list_and_delete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PETSTORE_API_KEY", "key")
    config = write_config(tmp_path)
    with respx.mock(base_url="http://api.test/v1") as router:
        router.get("/webhooks").respond(
            200, json={"data": [{"id": "wh_1", "url": "u", "events": ["a", "b"], "status": "active"}]}
        )
        deleted = router.delete("/webhooks/wh_1").respond(204)
        listed = CliRunner().invoke(main, ["webhooks", "list", "--config", str(config)])
        gone = CliRunner().invoke(main, ["webhooks", "delete", "--config", str(config), "wh_1"])
    assert listed.exit_code == 0
    assert "wh_1\tactive\tu\ta,b" in listed.output
    assert gone.exit_code == 0
    assert deleted.called


def test_replay_command_reports_still_invalid_letters(tmp_path: Path) -> None:
    async def dead_letter_one() -> None:
        async with running_receiver(tmp_path) as rx, httpx.AsyncClient() as client:
            body = envelope("evt_bad", data={"id": 1, "version": 1})  # no updatedAt
            assert (await client.post(rx.url, content=body, headers=signed_headers(body))).status_code == 200
            await InboxWorker(rx.writer, None, fetch_thin=False).drain()

    asyncio.run(dead_letter_one())
    config = write_config(tmp_path)
    result = CliRunner().invoke(
        main, ["replay", "--config", str(config), "--all"], env={"PETSTORE_API_KEY": ""}
    )
    assert result.exit_code == 0, result.output
    assert "event evt_bad: invalid" in result.output
    assert read_db(tmp_path / "mirror.db", "SELECT replay_outcome FROM _dead_letters") == [("invalid",)]
    usage = CliRunner().invoke(main, ["replay", "--config", str(config)])
    assert usage.exit_code == 2


# -- durability across kill -9 ---------------------------------------------------------------

DRIVER = f"""
import asyncio, socket, sys
import uvicorn
from syncd.config import WebhookConfig
from syncd.push.inbox import Inbox
from syncd.push.audit import AuditLog
from syncd.push.receiver_app import create_receiver_app, uvicorn_config
from syncd.store.db import Store
from syncd.store.writer import Writer
from syncd.push.inbox_worker import InboxWorker

async def main(db, port):
    writer = Writer(lambda: Store(db)); writer.start()
    cfg = WebhookConfig.model_validate({{"listen": f"127.0.0.1:{{port}}", "path": "{PATH}", "rate_limit": "100000/s"}})
    inbox = Inbox(writer); worker = InboxWorker(writer, None, fetch_thin=False)
    inbox.add_commit_listener(worker.wake)
    await inbox.start(); asyncio.create_task(worker.run())
    await uvicorn.Server(uvicorn_config(create_receiver_app(cfg, ("{SECRET}",), inbox, AuditLog(writer)), cfg)).serve()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def _start_driver(db: Path) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(db), str(port)], env={**os.environ, "PYTHONPATH": os.getcwd()}
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            assert proc.poll() is None, "driver exited"
            assert time.monotonic() < deadline, "driver did not start"
            time.sleep(0.05)


@pytest.mark.slow
async def test_every_acknowledged_delivery_survives_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "mirror.db"
    proc, port = _start_driver(db)
    url = f"http://127.0.0.1:{port}{PATH}"
    acked: set[str] = set()

    async def sender(client: httpx.AsyncClient, n: int) -> None:
        for i in range(10_000):
            eid = f"evt_{n}_{i}"
            body = envelope(eid, data={**_order(n * 100_000 + i)})
            try:
                r = await client.post(url, content=body, headers=signed_headers(body))
            except httpx.HTTPError:
                return
            if r.status_code == 200:
                acked.add(eid)

    async with httpx.AsyncClient(timeout=5, limits=httpx.Limits(max_connections=32)) as client:
        senders = [asyncio.create_task(sender(client, n)) for n in range(32)]
        while len(acked) < 500:
            await asyncio.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # mid-flight: deliveries are being sent and committed
        await asyncio.gather(*senders)
    proc.wait()
    assert len(acked) >= 500
    # Acknowledged means committed to _inbox; the worker moves each to _events as it applies
    # it, so a delivery the kill caught between the two is in _inbox.
    stored = {r[0] for r in read_db(db, "SELECT event_id FROM _events UNION SELECT event_id FROM _inbox")}
    assert acked <= stored, f"{len(acked - stored)} acknowledged deliveries lost"

    # After a restart the worker drains everything into the mirror.
    proc, port = _start_driver(db)
    try:
        deadline = time.monotonic() + 30
        while read_db(db, "SELECT COUNT(*) FROM _inbox")[0][0] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    mirrored = {r[0] for r in read_db(db, "SELECT id FROM orders")}
    expected = {int(e.split("_")[1]) * 100_000 + int(e.split("_")[2]) for e in acked}
    assert expected <= mirrored


def _order(order_id: int) -> dict[str, object]:
    from tests.webhook_support import order

    return order(order_id)
