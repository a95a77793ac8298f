"""`syncd run` and `syncd status`."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable

import click

from syncd.cli import status_view, terminal
from syncd.cli.common import config_option, load
from syncd.logs import setup_logging
from syncd.ops.status import collect_status
from syncd.service.daemon import Daemon
from syncd.service.reload import secret_values


@click.command("run")
@config_option
def run(config_path: str | None) -> None:
    """Run the daemon until SIGTERM/SIGINT (SIGHUP reloads the config)."""
    cfg = load(config_path)
    redactor = setup_logging(cfg.log, secrets=secret_values(cfg))
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        code = runner.run(Daemon(cfg, redactor=redactor).serve())
    sys.exit(code)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (uvicorn[standard] brings it): the receiver answers about twice as
    many deliveries per CPU second on it. uvicorn picks it only when it runs the loop itself."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


@click.command("status")
@config_option
@click.option(
    "--json", "as_json", is_flag=True, help="Print the report as JSON (see syncd.ops.status.STATUS_SCHEMA)."
)
def status(config_path: str | None, as_json: bool) -> None:
    """Mode and why, cursors, lag, last poll and webhook, counts; works while the daemon runs.

    Fits 80 columns: times relative, ids shortened (--json has every value in full). Colour
    only on a terminal; NO_COLOR turns it off.
    """
    cfg = load(config_path, require_secrets=False)
    report = collect_status(cfg)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    status_view.render(report, terminal.console())


commands = [run, status]
