"""`syncd replay` and `syncd webhooks register|list|delete`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import click

from syncd.api import PetstoreClient
from syncd.cli.common import config_option, load
from syncd.cli.sink_replay import replay_sink_letters
from syncd.config import Config
from syncd.contract import EVENTS, TEST_EVENT
from syncd.errors import SyncdError
from syncd.push.replay import ReplayResult, replay_dead_letters
from syncd.store.db import Store
from syncd.store.events import first_event_of_type
from syncd.store.writer import running_writer


class WaitTimeoutError(SyncdError, TimeoutError):
    def __init__(self, webhook_id: str, seconds: float, store: str) -> None:
        super().__init__(
            f"webhook {webhook_id}: no {TEST_EVENT} event reached {store} within {seconds:g}s; "
            "is `syncd run` serving the registered URL?"
        )


@click.command()
@config_option
@click.option("--id", "ids", type=int, multiple=True, help="Dead letter id to replay (repeatable).")
@click.option(
    "--all", "replay_all", is_flag=True, help="Every open dead letter: never replayed, or still invalid."
)
@click.option(
    "--sink",
    "sink",
    metavar="NAME",
    default=None,
    help="Instead: deliver the change feed sink NAME's open dead letters to it again.",
)
def replay(config_path: str | None, ids: tuple[int, ...], replay_all: bool, sink: str | None) -> None:
    """Re-drive dead letters: webhook deliveries through the inbox worker's logic, or with
    --sink, changes a sink gave up on through that sink (exit 1 if any fails again)."""
    if sink is not None:
        if ids or replay_all:
            raise click.UsageError("--sink replays a sink's dead letters; leave out --id and --all")
        replay_sink_letters(config_path, sink)
        return
    if not ids and not replay_all:
        raise click.UsageError("give --id ID (repeatable), --all, or --sink NAME")
    cfg = load(config_path, require_secrets=False)
    results = asyncio.run(_replay(cfg, list(ids) or None))
    if not results:
        click.echo("no dead letters to replay")
        return
    for r in results:
        detail = f" ({r.reason})" if r.reason else ""
        what = f"event {r.event_id}" if r.event_id is not None else f"{r.resource} record {r.record_id}"
        line = f"dead letter {r.dead_letter_id} {what}: {r.outcome}{detail}"
        # Ids and reasons come from records: a terminal must not act on what they hold.
        click.echo("".join(c if c.isprintable() else repr(c)[1:-1] for c in line))
    still = sum(r.outcome in ("invalid", "retry") for r in results)
    click.echo(f"{len(results) - still} replayed, {still} still dead letters")


async def _replay(cfg: Config, ids: list[int] | None) -> list[ReplayResult]:
    client = PetstoreClient.from_config(cfg) if cfg.secrets.api_key else None
    try:
        with running_writer(cfg.store.path) as writer:
            return await replay_dead_letters(
                writer, client, fetch_thin=cfg.webhook.fetch_thin_events and client is not None, ids=ids
            )
    finally:
        if client is not None:
            await client.aclose()


@click.group("webhooks")
def webhooks_group() -> None:
    """Manage the API's webhook endpoints for this daemon."""


def _default_url(cfg: Config) -> str:
    scheme = "https" if cfg.webhook.tls_cert else "http"
    return f"{scheme}://{cfg.webhook.listen}{cfg.webhook.path}"


def store_secret(path: str, secret: str, *, keep_existing: bool = True) -> int:
    """Add `secret` to the comma-separated secret file at `path` (or, without
    `keep_existing`, make it the only one) and return how many secrets the file holds.
    Keeping the others is what rotation needs: deliveries still signed by an older endpoint
    keep verifying until its secret is removed. The file is readable by the owner only from
    its first byte and replaced in one step, so a crash never leaves it half written."""
    secrets: list[str] = []
    if keep_existing:
        with contextlib.suppress(FileNotFoundError):
            secrets = [s.strip() for s in Path(path).read_text().split(",") if s.strip()]
    if secret not in secrets:
        secrets.append(secret)
    partial = f"{path}.{os.getpid()}.tmp"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (",".join(secrets) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, path)
    return len(secrets)


def wait_for_test_event(store_path: str, since: float, timeout: float, *, interval: float = 0.2) -> str:
    """The id of a webhook.test event received after `since`, read from the store read-only."""
    deadline = time.monotonic() + timeout
    while True:
        if Path(store_path).exists():
            conn = Store.open_reader(store_path)
            try:
                event_id = first_event_of_type(conn, TEST_EVENT, since)
            finally:
                conn.close()
            if event_id is not None:
                return event_id
        if time.monotonic() >= deadline:
            raise TimeoutError
        time.sleep(interval)


@webhooks_group.command("register")
@config_option
@click.option("--url", default=None, help="Delivery URL (default: from webhook.listen and webhook.path).")
@click.option("--events", "events", multiple=True, help="Event type (repeatable; default: every known one).")
@click.option(
    "--secret-file", default=None, help="Write the secret here, mode 0600 (default: webhook.secret_file)."
)
@click.option(
    "--replace",
    is_flag=True,
    help="Make the new secret the file's only one (default: add it to the secrets already there).",
)
@click.option("--show-secret", is_flag=True, help="Also print the secret.")
@click.option("--wait", is_flag=True, help="Wait until the webhook.test event reached the running daemon.")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds --wait waits.")
def register(
    config_path: str | None,
    url: str | None,
    events: tuple[str, ...],
    secret_file: str | None,
    replace: bool,
    show_secret: bool,
    wait: bool,
    timeout: float,
) -> None:
    """Register an endpoint with the API and store its secret."""
    cfg = load(config_path, require_secrets=False)
    target = secret_file or cfg.webhook.secret_file
    if not target and not show_secret:
        raise click.UsageError("give --secret-file PATH (or set webhook.secret_file), or --show-secret")
    chosen = sorted(events) if events else sorted(EVENTS)
    started = time.time()
    endpoint = asyncio.run(_register(cfg, url or _default_url(cfg), chosen))
    secret = str(endpoint.get("secret", ""))
    held = store_secret(target, secret, keep_existing=not replace) if target and secret else 0
    click.echo(f"registered {endpoint.get('id')} -> {endpoint.get('url')} ({', '.join(chosen)})")
    if held == 1:
        click.echo(f"secret written to {target} (mode 0600)")
    elif held:
        click.echo(
            f"secret added to {target} (mode 0600), which now holds {held} secrets; remove the old "
            "ones once their endpoints are deleted, then reload the daemon (SIGHUP)"
        )
    if show_secret:
        click.echo(f"secret: {secret}")
    if wait:
        try:
            event_id = wait_for_test_event(cfg.store.path, started, timeout)
        except TimeoutError:
            raise WaitTimeoutError(str(endpoint.get("id")), timeout, cfg.store.path) from None
        click.echo(f"{TEST_EVENT} {event_id} reached the daemon")


@webhooks_group.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True)
def list_(config_path: str | None, as_json: bool) -> None:
    """List registered endpoints."""
    cfg = load(config_path, require_secrets=False)
    endpoints = asyncio.run(_list(cfg))
    if as_json:
        click.echo(json.dumps(endpoints, indent=2))
        return
    for ep in endpoints:
        events = ",".join(ep.get("events", []))
        click.echo(f"{ep.get('id')}\t{ep.get('status', '')}\t{ep.get('url')}\t{events}")


@webhooks_group.command("delete")
@config_option
@click.argument("webhook_id")
def delete(config_path: str | None, webhook_id: str) -> None:
    """Delete a registered endpoint."""
    cfg = load(config_path, require_secrets=False)
    asyncio.run(_delete(cfg, webhook_id))
    click.echo(f"deleted {webhook_id}")


async def _register(cfg: Config, url: str, events: list[str]) -> dict[str, Any]:
    async with PetstoreClient.from_config(cfg) as client:
        return await client.register_webhook(url, events)


async def _list(cfg: Config) -> list[dict[str, Any]]:
    async with PetstoreClient.from_config(cfg) as client:
        return await client.list_webhooks()


async def _delete(cfg: Config, webhook_id: str) -> None:
    async with PetstoreClient.from_config(cfg) as client:
        await client.delete_webhook(webhook_id)


commands = [webhooks_group, replay]
