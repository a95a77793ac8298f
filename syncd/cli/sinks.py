"""`syncd sinks list` and `syncd sinks reset`: the change feed's sinks and their offsets."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from syncd.cli.common import config_option, load
from syncd.config import Config
from syncd.config_feed import SinkConfig
from syncd.ops.sink_offsets import (
    Target,
    TargetPastHeadError,
    parse_target,
    read_sink_offsets,
    reset_offset,
)


def configured_sink(cfg: Config, name: str) -> SinkConfig:
    """The sink called `name`; a usage error (exit 2) naming the configured ones otherwise."""
    for sink in cfg.sinks:
        if sink.name == name:
            return sink
    names = ", ".join(s.name for s in cfg.sinks) or "none ([[sinks]] tables in the config)"
    raise click.UsageError(f"no sink named {name!r} in {cfg.source}; configured: {names}")


@click.group("sinks")
def sinks_group() -> None:
    """The change feed's sinks: where they are in the log, and moving them."""


def _shown(value: int | None) -> str:
    return "-" if value is None else str(value)


@sinks_group.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the sinks as JSON.")
def list_sinks(config_path: str | None, as_json: bool) -> None:
    """Each configured sink: its type, the last seq it has taken, its lag behind the log's
    head and its open dead letters (`syncd replay --sink NAME` re-drives them)."""
    cfg = load(config_path, require_secrets=False)
    head, rows = read_sink_offsets(cfg.store.path, cfg.sinks)
    if as_json:
        click.echo(json.dumps({"head": head, "sinks": [r.as_dict() for r in rows]}, indent=2))
        return
    if not rows:
        click.echo(f"no sinks configured in {cfg.source} (head of the log: {head})")
        return
    table = Table(title=f"sinks (head of the log: {head})")
    for column in ("sink", "type", "delivered", "lag", "dead letters"):
        table.add_column(column, justify="left" if column in ("sink", "type") else "right")
    for row in rows:
        table.add_row(Text(row.name), row.type, _shown(row.delivered), _shown(row.lag), str(row.dead_letters))
    Console().print(table)
    if any(r.delivered is None for r in rows):
        click.echo("delivered '-': the daemon has not started this sink yet")


class _Target(click.ParamType[Target]):
    name = "SEQ|head"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> Target:
        if isinstance(value, int):
            return value
        try:
            return parse_target(str(value))
        except ValueError:
            self.fail(f"{value!r} is neither a seq (0 or more) nor 'head'", param, ctx)


@sinks_group.command("reset")
@config_option
@click.argument("name")
@click.option(
    "--to",
    "target",
    type=_Target(),
    required=True,
    help="The last seq the sink has taken: 0 redelivers the whole log, 'head' skips to now.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.0),
    default=10.0,
    show_default=True,
    help="Seconds to wait for a running daemon to make the reset.",
)
def reset(config_path: str | None, name: str, target: Target, timeout: float) -> None:
    """Move sink NAME's offset: it next receives the changes after SEQ.

    With no daemon running the offset is written directly. While the daemon runs it is
    asked to make the reset (SIGHUP, which also reloads its config); the command waits for
    it up to --timeout and fails, changing nothing, if the daemon does not take it.
    """
    cfg = load(config_path, require_secrets=False)
    configured_sink(cfg, name)
    try:
        result = reset_offset(cfg.store.path, name, target, timeout=timeout)
    except TargetPastHeadError as exc:
        raise click.BadParameter(str(exc), param_hint="--to") from None
    how = f"by the daemon (pid {result.daemon_pid})" if result.daemon_pid is not None else "directly"
    click.echo(f"sink {name}: offset {_shown(result.old)} -> {_shown(result.new)} ({how})")
    if result.pruned_before and result.first_available is not None:
        click.echo(
            f"syncd: note: changes up to {result.first_available - 1} were pruned (changes.retention);"
            f" the sink resumes at {result.first_available}, the oldest still in the log",
            err=True,
        )


commands = [sinks_group]
