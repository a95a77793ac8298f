"""Command line: parse, call, print. Exit codes: 0 ok, 1 runtime failure, 2 usage or config error."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from syncd.cli.common import SyncdGroup, config_option, load
from syncd.config import check_warnings
from syncd.feed.build import sink_warnings


@click.group(cls=SyncdGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="syncd")
def main() -> None:
    """syncd keeps a local SQLite mirror of the Pet Store API consistent."""


@main.command("check-config")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the effective config as JSON.")
def check_config(config_path: str | None, as_json: bool) -> None:
    """Validate the config and print it with secrets redacted."""
    cfg = load(config_path)
    data = cfg.redacted()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for warning in [*check_warnings(cfg), *sink_warnings(cfg)]:
        click.echo(f"syncd: warning: {warning}", err=True)
    click.echo(f"# {cfg.source}: OK")
    for section, values in data.items():
        # `sinks` is an array of tables: one [[sinks]] header per sink, as the file has it.
        for table in values if isinstance(values, list) else [values]:
            click.echo(f"[[{section}]]" if isinstance(values, list) else f"[{section}]")
            for key, value in table.items():
                click.echo(f"{key} = {_toml_value(value)}")
            click.echo()


def _toml_value(value: Any) -> str:
    # JSON strings, numbers, booleans and lists read the same in TOML; tables (a sink's env,
    # the sinks' secrets) must be inline tables.
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def _register() -> None:
    """Commands live next to the code they drive; each module lists its click commands."""
    from syncd.cli import browse, changes, demo, init, receive, run, sinks, sync, webhooks
    from syncd.sim.cli import simulate

    for cmd in (
        *sync.commands,
        *changes.commands,
        *sinks.commands,
        *webhooks.commands,
        *run.commands,
        *receive.commands,
        *demo.commands,
        *init.commands,
        *browse.commands,
        simulate,
    ):
        main.add_command(cmd)


_register()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
