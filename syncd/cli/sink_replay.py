"""`syncd replay --sink NAME`: a change feed sink's dead letters, delivered to it again."""

from __future__ import annotations

import asyncio
import sys

import click

from syncd.cli.common import EXIT_FAILURE, load
from syncd.cli.sinks import configured_sink
from syncd.config import Config
from syncd.feed.build import build_sink
from syncd.feed.http import HttpSink
from syncd.ops.change_reader import open_change_log
from syncd.ops.sink_replay import SinkReplayResult, replay_sink_at


def _printable(text: str) -> str:
    # Reasons quote what a receiver answered: a terminal must not act on what they hold.
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def replay_sink_letters(config_path: str | None, name: str) -> None:
    # The sink's own secret is all this needs: the API key and webhook secrets may be absent
    # from an operator's shell, and a missing sink secret is reported by build_sink (exit 2).
    cfg = load(config_path, require_secrets=False)
    sink_cfg = configured_sink(cfg, name)
    # Read-only first: a missing store, or one without a log, is an error, never created.
    open_change_log(cfg.store.path).close()
    results = asyncio.run(_replay(cfg, sink_cfg.name))
    if not results:
        click.echo(f"sink {name}: no dead letters to replay")
        return
    for r in results:
        outcome = "delivered" if r.delivered else f"failed ({_printable(r.reason or '')})"
        click.echo(f"sink {name}: dead letter {r.dead_letter_id} seq {r.seq} {r.event}: {outcome}")
    failed = sum(not r.delivered for r in results)
    click.echo(f"sink {name}: {len(results) - failed} delivered, {failed} failed (still dead letters)")
    if failed:
        sys.exit(EXIT_FAILURE)


async def _replay(cfg: Config, name: str) -> list[SinkReplayResult]:
    sink_cfg = configured_sink(cfg, name)
    sink = build_sink(sink_cfg, cfg.secrets)
    try:
        return await replay_sink_at(cfg.store.path, sink)
    finally:
        if isinstance(sink, HttpSink):
            await sink.aclose()
