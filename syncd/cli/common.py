"""What every command shares: the --config option, loading the config, exit codes, and
the group that turns syncd's errors into one line and its exit code."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from syncd.config import Config, load_config, resolve_config_path
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
