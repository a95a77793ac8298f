"""`syncd init [PATH]`: write a first config, by questions or by flags.

It asks where the API key and the webhook secret live (an environment variable, a file, or a
systemd credential), never for the secrets themselves, so the file it writes holds none. The
file is validated with the same loader `check-config` uses before it is written; the keys it
does not set keep their defaults (every one is in config.example.toml).
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click

from syncd.cli.common import EXIT_USAGE
from syncd.config import API_KEY_CREDENTIAL, WEBHOOK_SECRET_CREDENTIAL, load_config, resolve_config_path
from syncd.errors import ConfigError
from syncd.timefmt import format_epoch

DEFAULT_API_URL = "https://api.petstoreapi.com/v1"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INSTANCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True, slots=True)
class SecretSource:
    """Where a secret lives: `env:NAME`, `file:PATH` or `credential`."""

    kind: str
    where: str = ""

    def __str__(self) -> str:
        return self.kind if self.kind == "credential" else f"{self.kind}:{self.where}"


def parse_source(text: str) -> SecretSource:
    """`env:NAME`, `file:/abs/path` or `credential`; ValueError saying what is allowed."""
    kind, _, where = text.partition(":")
    if kind == "credential" and not where:
        return SecretSource("credential")
    if kind == "env" and _ENV_NAME.fullmatch(where):
        return SecretSource("env", where)
    if kind == "env":
        raise ValueError(f"{where!r} is not an environment variable name (the name, never the secret itself)")
    if kind == "file" and where.startswith("/"):
        return SecretSource("file", where)
    if kind == "file":
        raise ValueError(f"{where!r}: give the file as an absolute path")
    raise ValueError(f"{text!r}: use env:NAME, file:/path or credential")


def _source_option(ctx: click.Context, param: click.Parameter, value: str | None) -> SecretSource | None:
    if value is None:
        return None
    try:
        return parse_source(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


@dataclass(frozen=True, slots=True)
class Answers:
    api_url: str
    mode: str
    store: str
    api_key: SecretSource
    webhook_secret: SecretSource
    webhook_listen: str
    webhook_path: str
    admin_listen: str


def _q(value: str) -> str:
    """A TOML basic string."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _secret_lines(source: SecretSource, env_key: str, file_key: str, credential: str) -> list[str]:
    if source.kind == "env":
        return [f"# Read from the environment variable {source.where}.", f"{env_key} = {_q(source.where)}"]
    if source.kind == "file":
        return ["# Read from this file (keep it mode 0600).", f"{file_key} = {_q(source.where)}"]
    return [
        f"# From the systemd credential {credential!r} ($CREDENTIALS_DIRECTORY/{credential}),",
        "# which the unit's LoadCredential= provides.",
    ]


def render(answers: Answers, *, now: float | None = None) -> str:
    """The config file's text: the answers, each with a comment saying what it does."""
    a = answers
    lines = [
        f"# syncd configuration, written by `syncd init` on {format_epoch(now)[:10]}.",
        "# Keys not set here keep their defaults; config.example.toml lists every key.",
        "# Secrets never sit in this file: below it says where each one is read from.",
        "# Check it with: syncd check-config --config <this file>",
        "",
        "[api]",
        "# Base URL of the Pet Store API.",
        f"base_url = {_q(a.api_url)}",
        "# The API key (sent as 'Authorization: Bearer <key>').",
        *_secret_lines(a.api_key, "api_key_env", "api_key_file", API_KEY_CREDENTIAL),
        "",
        "[store]",
        "# The SQLite mirror; its directory is created if missing.",
        f"path = {_q(a.store)}",
        "",
        "[sync]",
        "# push: signed webhooks, with a safety poll and fallback to polling; poll: polling only.",
        f"mode = {_q(a.mode)}",
        'resources = ["orders", "customers", "inventory"]',
        "",
        "[poll]",
        "# Poll interval in poll mode and while push mode falls back; push mode's safety poll runs",
        "# every safety_interval.",
        'interval = "30s"',
        'safety_interval = "10m"',
        "",
    ]
    if a.mode == "push":
        lines += [
            "[webhook]",
            "# The public listener: it serves the webhook path and nothing else.",
            f"listen = {_q(a.webhook_listen)}",
            f"path = {_q(a.webhook_path)}",
            'scheme = "petstore"',
            "# The endpoint's signing secret (several, comma-separated, while rotating).",
            *_secret_lines(a.webhook_secret, "secret_env", "secret_file", WEBHOOK_SECRET_CREDENTIAL),
            "",
        ]
    lines += [
        "[admin]",
        "# /healthz, /readyz, /metrics and the status page (GET /); keep it off public networks.",
        f"listen = {_q(a.admin_listen)}",
        "",
        "[log]",
        'level = "info"',
        "# text, or json for a log collector.",
        'format = "text"',
    ]
    return "\n".join(lines) + "\n"


def _ask_source(what: str, default: SecretSource) -> SecretSource:
    kind = click.prompt(
        f"Where does the {what} live?",
        type=click.Choice(["env", "file", "credential"]),
        default=default.kind,
    )
    if kind == "credential":
        return SecretSource("credential")
    label = "Environment variable name" if kind == "env" else "File (absolute path)"
    fallback = default.where if default.kind == kind else ""
    while True:
        where = click.prompt(f"  {label}", default=fallback or None)
        try:
            return parse_source(f"{kind}:{where}")
        except ValueError as exc:
            click.echo(f"  {exc}", err=True)


def _write(path: Path, text: str) -> None:
    """Atomically, so a config read at the same moment is the old one or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        # No secret inside: readable by the operator's tools, writable by its owner.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@click.command("init")
@click.argument("path", required=False, metavar="[PATH]")
@click.option("--non-interactive", is_flag=True, help="Ask nothing: flags, then defaults.")
@click.option(
    "--instance", metavar="NAME", help="For syncd@NAME: /etc/syncd/NAME.toml, its own store, credentials."
)
@click.option("--api-url", metavar="URL", help=f"Base URL of the API [default: {DEFAULT_API_URL}].")
@click.option("--mode", type=click.Choice(["push", "poll"]), help="Sync mode [default: push].")
@click.option(
    "--store", "store_path", metavar="PATH", help="The SQLite mirror [default: /var/lib/syncd/mirror.db]."
)
@click.option(
    "--api-key",
    "api_key",
    callback=_source_option,
    metavar="env:NAME|file:PATH|credential",
    help="Where the API key lives [default: env:PETSTORE_API_KEY].",
)
@click.option(
    "--webhook-secret",
    callback=_source_option,
    metavar="env:NAME|file:PATH|credential",
    help="Where the webhook secret lives [default: env:PETSTORE_WEBHOOK_SECRET].",
)
@click.option("--webhook-listen", metavar="HOST:PORT", help="Webhook listener [default: 127.0.0.1:8787].")
@click.option("--webhook-path", metavar="PATH", help="Webhook path [default: /webhooks/petstore].")
@click.option("--admin-listen", metavar="HOST:PORT", help="Admin listener [default: 127.0.0.1:9787].")
@click.option("--force", is_flag=True, help="Replace an existing file.")
def init(
    path: str | None,
    non_interactive: bool,
    instance: str | None,
    api_url: str | None,
    mode: str | None,
    store_path: str | None,
    api_key: SecretSource | None,
    webhook_secret: SecretSource | None,
    webhook_listen: str | None,
    webhook_path: str | None,
    admin_listen: str | None,
    force: bool,
) -> None:
    """Write a first config to PATH (default: $SYNCD_CONFIG, then /etc/syncd/config.toml).

    Asks for the API URL, the mode, where the API key and webhook secret live and the listen
    addresses; flags answer a question in advance. The file holds no secret and passes
    `syncd check-config` (the secrets themselves must be in place before `syncd run`).
    """
    if instance is not None and not _INSTANCE.fullmatch(instance):
        raise click.BadParameter(
            "letters, digits, '_', '.', '-' (a systemd instance name)", param_hint="--instance"
        )
    target = Path(path or (f"/etc/syncd/{instance}.toml" if instance else resolve_config_path(None)))
    if target.exists() and not force:
        click.echo(f"syncd: {target} exists; --force replaces it", err=True)
        raise SystemExit(EXIT_USAGE)
    credential = SecretSource("credential")
    defaults: dict[str, Any] = {
        "api_url": DEFAULT_API_URL,
        "mode": "push",
        "store": f"/var/lib/syncd/{instance}/mirror.db" if instance else "/var/lib/syncd/mirror.db",
        "api_key": credential if instance else SecretSource("env", "PETSTORE_API_KEY"),
        "webhook_secret": credential if instance else SecretSource("env", "PETSTORE_WEBHOOK_SECRET"),
        "webhook_listen": "127.0.0.1:8787",
        "webhook_path": "/webhooks/petstore",
        "admin_listen": "127.0.0.1:9787",
    }
    given: dict[str, Any] = {
        "api_url": api_url,
        "mode": mode,
        "store": store_path,
        "api_key": api_key,
        "webhook_secret": webhook_secret,
        "webhook_listen": webhook_listen,
        "webhook_path": webhook_path,
        "admin_listen": admin_listen,
    }
    values = {k: v if v is not None else defaults[k] for k, v in given.items()}
    if not non_interactive:
        ask = {k for k, v in given.items() if v is None}
        if "api_url" in ask:
            values["api_url"] = click.prompt("API base URL", default=defaults["api_url"])
        if "mode" in ask:
            values["mode"] = click.prompt("Mode", type=click.Choice(["push", "poll"]), default="push")
        if "store" in ask:
            values["store"] = click.prompt("Mirror file", default=defaults["store"])
        if "api_key" in ask:
            values["api_key"] = _ask_source("API key", defaults["api_key"])
        if values["mode"] == "push":
            if "webhook_secret" in ask:
                values["webhook_secret"] = _ask_source("webhook secret", defaults["webhook_secret"])
            if "webhook_listen" in ask:
                values["webhook_listen"] = click.prompt(
                    "Webhook listener", default=defaults["webhook_listen"]
                )
            if "webhook_path" in ask:
                values["webhook_path"] = click.prompt("Webhook path", default=defaults["webhook_path"])
        if "admin_listen" in ask:
            values["admin_listen"] = click.prompt(
                "Admin listener (status page)", default=defaults["admin_listen"]
            )
    answers = Answers(**values)
    _check(answers, target)
    _write(target, render(answers))
    click.echo(f"wrote {target}")
    for line in _next_steps(answers, target):
        click.echo(f"  {line}")


def _check(answers: Answers, target: Path) -> None:
    """The same validation `check-config` runs, before anything is written: a bad answer
    (an unparsable listen address, a URL that is no URL) costs nothing. Secret files are
    named, not read: they need not exist until `syncd run`."""
    unread = SecretSource("env", "SYNCD_INIT_UNSET")
    probe_text = render(
        replace(
            answers,
            api_key=unread if answers.api_key.kind == "file" else answers.api_key,
            webhook_secret=unread if answers.webhook_secret.kind == "file" else answers.webhook_secret,
        )
    )
    with tempfile.TemporaryDirectory(prefix="syncd-init-") as scratch:
        probe = Path(scratch) / target.name
        probe.write_text(probe_text, encoding="utf-8")
        try:
            load_config(probe, env={}, require_secrets=False)
        except ConfigError as exc:
            click.echo(f"syncd: config error: {str(exc).replace(str(probe), str(target))}", err=True)
            raise SystemExit(EXIT_USAGE) from None


def _next_steps(a: Answers, target: Path) -> list[str]:
    steps = []
    for what, source, credential in (
        ("API key", a.api_key, API_KEY_CREDENTIAL),
        ("webhook secret", a.webhook_secret, WEBHOOK_SECRET_CREDENTIAL),
    ):
        if what == "webhook secret" and a.mode != "push":
            continue
        if source.kind == "env":
            steps.append(f"set ${source.where} to the {what}")
        elif source.kind == "file":
            steps.append(f"put the {what} in {source.where} (mode 0600)")
        else:
            steps.append(f"put the {what} where the unit's LoadCredential={credential}:... points")
    steps.append(f"syncd check-config --config {target}")
    return steps


commands = [init]
