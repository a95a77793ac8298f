"""`syncd simulate`: the Pet Store simulator as a foreground process.

Prints one line `petstore simulator listening on <url>` (flushed) once the port is bound, so a
parent process can wait for it; with --webhook-url it registers that endpoint and prints its
secret once when it was generated.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import Any

import click
import uvicorn

from syncd.config_values import parse_duration
from syncd.contract import EVENTS
from syncd.errors import ConfigError
from syncd.signatures import SCHEMES
from syncd.sim.app import create_app
from syncd.sim.config import PRESETS, FaultConfig, SimConfig
from syncd.sim.server import bound_port, uvicorn_config
from syncd.sim.simulator import Simulator

READY_PREFIX = "petstore simulator listening on "


class Duration(click.ParamType[float]):
    """'10s', '500ms', '5m', or plain seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return float(value)
        except ValueError:
            pass
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = Duration()
RATE = click.FloatRange(0.0, 1.0)
# CLI option -> FaultConfig field; each overrides the chosen --faults preset.
_FAULT_OPTIONS: dict[str, str] = {
    "drop_rate": "webhook_drop_rate",
    "duplicate_rate": "webhook_duplicate_rate",
    "delay_rate": "webhook_delay_rate",
    "max_delay": "webhook_max_delay",
    "thin_rate": "thin_event_rate",
    "rate_limit_rate": "api_429_rate",
    "retry_after": "retry_after",
    "error_rate": "api_5xx_rate",
    "hang_rate": "api_hang_rate",
    "hang_seconds": "hang_seconds",
    "short_page_rate": "short_page_rate",
    "cursor_expire_rate": "cursor_expire_rate",
}


@click.command("simulate")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int, help="0 picks a free port.")
@click.option("--api-key", default="test-key", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--rate", default=10.0, show_default=True, type=float, help="Changes per second.")
@click.option("--max-lag", default="10s", show_default=True, type=DURATION)
@click.option("--time-scale", default=1.0, show_default=True, type=float)
@click.option("--scheme", default="petstore", show_default=True, type=click.Choice(SCHEMES))
@click.option("--webhook-url", default=None, help="Register this endpoint at start.")
@click.option("--secret", default=None, help="Secret of --webhook-url (generated if omitted).")
@click.option("--events", default="*", show_default=True, help="Comma-separated, or *.")
@click.option("--preload-orders", default=0, show_default=True, type=click.IntRange(0))
@click.option("--preload-customers", default=0, show_default=True, type=click.IntRange(0))
@click.option("--preload-inventory", default=12, show_default=True, type=click.IntRange(0))
@click.option("--cursor-ttl", default="10m", show_default=True, type=DURATION)
@click.option("--faults", "preset", default="none", show_default=True, type=click.Choice(PRESETS))
@click.option("--drop-rate", type=RATE, help="Webhook deliveries lost outright.")
@click.option("--duplicate-rate", type=RATE, help="Webhook deliveries sent twice.")
@click.option("--delay-rate", type=RATE, help="Webhook deliveries delayed (reordered).")
@click.option("--max-delay", type=DURATION, help="Upper bound of that delay.")
@click.option("--thin-rate", type=RATE, help="Deliveries with data {id} only.")
@click.option("--rate-limit-rate", type=RATE, help="API requests answered 429.")
@click.option("--retry-after", type=click.IntRange(0), help="Retry-After seconds on 429.")
@click.option("--error-rate", type=RATE, help="API requests answered 500/502/503/504.")
@click.option("--hang-rate", type=RATE, help="API requests that hang first.")
@click.option("--hang-seconds", type=DURATION, help="How long they hang.")
@click.option("--short-page-rate", type=RATE, help="Pages shorter than limit with has_more.")
@click.option("--cursor-expire-rate", type=RATE, help="Cursors refused as expired early.")
def simulate(
    host: str,
    port: int,
    api_key: str,
    seed: int,
    rate: float,
    max_lag: float,
    time_scale: float,
    scheme: str,
    webhook_url: str | None,
    secret: str | None,
    events: str,
    preload_orders: int,
    preload_customers: int,
    preload_inventory: int,
    cursor_ttl: float,
    preset: str,
    **fault_options: Any,
) -> None:
    """Run the Pet Store API simulator (workload, webhooks, faults) until interrupted."""
    overrides = {_FAULT_OPTIONS[name]: value for name, value in fault_options.items() if value is not None}
    event_names = tuple(e.strip() for e in events.split(",") if e.strip())
    unknown = [e for e in event_names if e not in EVENTS and e != "*"]
    if unknown:
        raise click.BadParameter(f"unknown events {unknown}; valid: {', '.join(EVENTS)}")
    try:
        config = SimConfig(
            seed=seed,
            rate=rate,
            api_key=api_key,
            max_lag=max_lag,
            time_scale=time_scale,
            scheme=scheme,
            preload_orders=preload_orders,
            preload_customers=preload_customers,
            preload_inventory=preload_inventory,
            cursor_ttl=cursor_ttl,
            faults=FaultConfig.preset(preset).replace(overrides),
        )
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    asyncio.run(_serve(config, host, port, webhook_url, secret, event_names))


async def _serve(
    config: SimConfig,
    host: str,
    port: int,
    webhook_url: str | None,
    secret: str | None,
    events: tuple[str, ...],
) -> None:
    sim = Simulator(config)
    server = uvicorn.Server(uvicorn_config(create_app(sim), host, port))
    # uvicorn handles SIGINT/SIGTERM while serving, then restores the previous handlers and
    # raises the signal again; this handler makes that second delivery a no-op, so a
    # graceful stop exits 0 instead of dying by the signal.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: setattr(server, "should_exit", True))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task
            raise click.ClickException(f"the simulator could not listen on {host}:{port}")
        await asyncio.sleep(0.01)
    url = f"http://{host}:{bound_port(server)}"
    if webhook_url is not None:
        endpoint = sim.webhooks.register(webhook_url, events, secret=secret)
        if secret is None:
            click.echo(f"webhook secret for {endpoint.id}: {endpoint.secret}")
    click.echo(READY_PREFIX + url)
    sys.stdout.flush()
    while not task.done() and not server.should_exit:
        await asyncio.wait({task}, timeout=0.1)
    # Let requests parked by the hang fault go, so they do not hold the graceful shutdown.
    sim.begin_shutdown()
    with contextlib.suppress(asyncio.CancelledError):
        await task
