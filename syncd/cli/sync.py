"""`syncd verify` and `syncd resync`: the pull path, on demand."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import sys
import threading
from collections.abc import Sequence

import click

from syncd.api import PetstoreClient
from syncd.cli.common import EXIT_FAILURE, config_option, load
from syncd.config import Config
from syncd.contract import RESOURCES
from syncd.errors import StoreError
from syncd.logs import setup_logging
from syncd.ops.verify import VerifyReport, verify_resource
from syncd.poll.poller import Poller, PollResult
from syncd.poll.progress import make_progress
from syncd.store.db import Store
from syncd.store.writer import Writer


def _resources(cfg: Config, resource: str | None) -> tuple[str, ...]:
    return (resource,) if resource else tuple(cfg.sync.resources)


async def _verify(cfg: Config, resources: Sequence[str], *, progress: bool) -> list[VerifyReport]:
    conn = Store.open_reader(cfg.store.path)
    reporter = make_progress() if progress else None
    try:
        async with PetstoreClient.from_config(cfg) as client:
            # The largest page the API allows: verify reads everything, in the fewest requests.
            return [
                await verify_resource(
                    client, conn, resource, page_size=1000, progress=reporter, max_pages=cfg.poll.max_pages
                )
                for resource in resources
            ]
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read store {cfg.store.path}: {exc}") from None
    finally:
        conn.close()


@click.command()
@config_option
@click.option("--resource", type=click.Choice(RESOURCES), default=None, help="Only this resource.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify(config_path: str | None, resource: str | None, as_json: bool) -> None:
    """Compare the mirror with a full listing of the API.

    Reports records missing from the mirror, stale (older version in the mirror) and extra
    (live in the mirror, gone from the API). Exits 1 on drift. Run it when changes have
    stopped: listings lag writes by up to 10 s, so a mirror ahead of the listing is reported
    but is not drift.
    """
    cfg = load(config_path)
    reports = asyncio.run(_verify(cfg, _resources(cfg, resource), progress=not as_json))
    ok = all(r.ok for r in reports)
    if as_json:
        click.echo(json.dumps({"ok": ok, "resources": {r.resource: r.as_dict() for r in reports}}, indent=2))
    else:
        for report in reports:
            click.echo(report.describe())
    if not ok:
        sys.exit(EXIT_FAILURE)


async def _resync(cfg: Config, resources: Sequence[str], *, allow_mass_delete: bool) -> list[PollResult]:
    writer = Writer(lambda: Store(cfg.store.path))
    writer.start()
    try:
        async with PetstoreClient.from_config(cfg) as client:
            poller = Poller(client, writer, cfg, progress=make_progress())
            loop = asyncio.get_running_loop()
            # A signal ends the listing after the page in hand is committed (signal handlers
            # can only be set from the main thread).
            if threading.current_thread() is threading.main_thread():
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, poller.stop)
            results = []
            for resource in resources:
                results.append(await poller.full_relist(resource, allow_mass_delete=allow_mass_delete))
                if poller.stopping:
                    break
            return results
    finally:
        writer.stop()


@click.command()
@click.argument("resource", type=click.Choice(RESOURCES), required=False)
@config_option
@click.option(
    "--allow-mass-delete",
    is_flag=True,
    help="Tombstone what the listing lacks even past poll.max_tombstone_ratio (after checking the API).",
)
def resync(resource: str | None, config_path: str | None, allow_mass_delete: bool) -> None:
    """Run a full relist now, for RESOURCE or every configured resource.

    Records the listing no longer returns are tombstoned, except those changed within the
    visibility lag plus lookback of the listing. A relist that would tombstone more than
    poll.max_tombstone_ratio of the live records (or all of them) tombstones nothing and
    exits 1, unless --allow-mass-delete is given.
    """
    cfg = load(config_path)
    setup_logging(cfg.log, secrets=[s for s in (cfg.secrets.api_key,) if s])
    results = asyncio.run(_resync(cfg, _resources(cfg, resource), allow_mass_delete=allow_mass_delete))
    for r in results:
        state = "stopped early" if r.stopped else "done"
        click.echo(
            f"{r.resource}: {state}: {r.seen} listed in {r.pages} pages, {r.applied} written,"
            f" {r.tombstoned} tombstoned, cursor {r.cursor}, {r.duration:.1f}s"
        )
        if r.held_back is not None:
            click.echo(f"{r.resource}: {r.held_back}")
    if any(r.stopped or r.held_back is not None for r in results):
        sys.exit(EXIT_FAILURE)


commands = [verify, resync]
