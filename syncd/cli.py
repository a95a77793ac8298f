"""Command line: parse, call, print. Exit codes: 0 ok, 1 runtime failure, 2 usage or config error."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from syncd.config import Config, check_warnings, load_config, resolve_config_path
from syncd.errors import ConfigError, SyncdError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class SyncdGroup(click.Group):
    """Turns syncd's own errors into one clear line and the documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            click.echo(f"syncd: config error: {exc}", err=True)
            ctx.exit(EXIT_USAGE)
        except SyncdError as exc:
            click.echo(f"syncd: error: {exc}", err=True)
            ctx.exit(EXIT_FAILURE)


def config_option(fn: F) -> F:
    return click.option(
        "--config",
        "config_path",
        metavar="PATH",
        default=None,
        help="Config file (default: $SYNCD_CONFIG, then /etc/syncd/config.toml).",
    )(fn)


def load(config_path: str | None, *, require_secrets: bool = True) -> Config:
    return load_config(resolve_config_path(config_path), require_secrets=require_secrets)


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
    for warning in check_warnings(cfg):
        click.echo(f"syncd: warning: {warning}", err=True)
    click.echo(f"# {cfg.source}: OK")
    for section, values in data.items():
        click.echo(f"[{section}]")
        for key, value in values.items():
            click.echo(f"{key} = {json.dumps(value)}")
        click.echo()


def _register() -> None:
    """Commands live next to the code they drive; each module lists its click commands."""
    from syncd import cli_daemon, cli_demo, cli_sync, cli_webhooks
    from syncd.sim.cli import simulate

    for cmd in (
        *cli_sync.commands,
        *cli_webhooks.commands,
        *cli_daemon.commands,
        *cli_demo.commands,
        simulate,
    ):
        main.add_command(cmd)


_register()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
