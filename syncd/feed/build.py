"""From the config's `[[sinks]]` to running parts: `build_sink` makes a sink, `runner_options`
gives the `SinkRunner` its settings, `sink_warnings` says which sinks cannot receive anything.

The exec sink's environment is built here, not inherited: syncd's own environment holds the
API key and the webhook secret (`*_env`), and a handler script has no business seeing them.
It gets the few variables a program needs to run as the same user (`PASSED_ENV`, and every
`LC_*`), `SYNCD_SINK` set to the sink's name, and then the sink's `env` table.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final, TypedDict

import aiohttp

from syncd.config import Config
from syncd.config_feed import SINK_NAME_ENV, ExecSinkConfig, HttpSinkConfig, NatsSinkConfig, SinkConfig
from syncd.config_nats import NatsConfig
from syncd.config_secrets import Secrets
from syncd.core.events import ALL_EVENTS, EVENT_RULES, matches
from syncd.errors import ConfigError
from syncd.feed.base import Sink
from syncd.feed.command import CommandSink
from syncd.feed.http import HttpSink
from syncd.feed.nats import NatsSink
from syncd.feed.runner import OnFailure, Start
from syncd.jetstream import JetStreamLink, changes_stream

#: Variables of syncd's environment an exec sink's command gets, when syncd has them.
PASSED_ENV: Final = ("PATH", "HOME", "LANG", "TZ", "USER", "LOGNAME", "SHELL", "TMPDIR")
#: ... and every variable starting with this (LC_ALL, LC_CTYPE, ...: the locale).
PASSED_ENV_PREFIX: Final = "LC_"


class RunnerOptions(TypedDict):
    """The `SinkRunner` keyword arguments a sink's config decides:
    `SinkRunner(sink, log, notifier, **runner_options(cfg))`."""

    events: tuple[str, ...]
    on_failure: OnFailure
    max_attempts: int
    batch_size: int
    start: Start


def sink_environment(cfg: ExecSinkConfig, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment an exec sink's command runs with (see the module's doc)."""
    environ = os.environ if environ is None else environ
    env = {
        name: value
        for name, value in environ.items()
        if name in PASSED_ENV or name.startswith(PASSED_ENV_PREFIX)
    }
    env[SINK_NAME_ENV] = cfg.name
    # Config refuses SYNCD_SINK in `env`, so the name cannot be overridden here.
    env.update(cfg.env)
    return env


def build_sink(
    cfg: SinkConfig,
    secrets: Secrets,
    *,
    client: aiohttp.ClientSession | None = None,
    environ: Mapping[str, str] | None = None,
    nats: NatsConfig | None = None,
    retention: float = 7 * 86400.0,
) -> Sink:
    """The sink `cfg` describes. `secrets` is `Config.secrets` (an http sink's signing
    secret is resolved by `load_config`); `client` is shared by http sinks when given,
    otherwise each http sink owns one (close it with `aclose()`); `environ` stands in for
    syncd's environment when building an exec sink's (tests). A nats sink connects to
    `nats` (`Config.nats`) and creates the changes stream, if missing, with `retention` as
    its max age."""
    if isinstance(cfg, NatsSinkConfig):
        nats_cfg = nats or NatsConfig()
        link = JetStreamLink(
            nats_cfg, secrets.nats_token, [changes_stream(nats_cfg, retention)], name=f"syncd-sink-{cfg.name}"
        )
        return NatsSink(cfg.name, link, nats_cfg.changes_stream, timeout=cfg.timeout)
    if isinstance(cfg, HttpSinkConfig):
        secret = secrets.sink_secrets.get(cfg.name)
        if not secret:
            # load_config(require_secrets=True) refuses a config like this; only a config
            # loaded without secrets (status, tests) gets here.
            raise ConfigError(f"sink {cfg.name!r}", cfg.secret_key, "no secret was resolved for this sink")
        return HttpSink(cfg.name, cfg.url, secret, timeout=cfg.timeout, client=client)
    return CommandSink(cfg.name, cfg.command, timeout=cfg.timeout, env=sink_environment(cfg, environ))


def runner_options(cfg: SinkConfig) -> RunnerOptions:
    return RunnerOptions(
        events=cfg.events,
        on_failure=OnFailure(cfg.on_failure),
        max_attempts=cfg.max_attempts,
        batch_size=cfg.batch_size,
        start=Start(cfg.start),
    )


def _events_of(resources: tuple[str, ...]) -> frozenset[str]:
    # An event's prefix names its resource: the table's fixed events say which prefix each
    # resource has (order.* for orders).
    prefixes = {EVENT_RULES[resource].created.split(".")[0] for resource in resources}
    return frozenset(event for event in ALL_EVENTS if event.split(".")[0] in prefixes)


def sink_warnings(cfg: Config) -> list[str]:
    """Sinks that are valid but will not receive what the operator expects: patterns that
    match no event syncd emits (a typo delivers nothing, silently), or only events of
    resources not mirrored."""
    out: list[str] = []
    if cfg.sinks and not cfg.changes.enabled:
        out.append("changes.enabled is false: no changes are logged, so the sinks receive nothing new")
    emitted = _events_of(cfg.sync.resources)
    for index, sink in enumerate(cfg.sinks):
        key = f"sinks.{index}.events"
        unknown = [p for p in sink.events if not any(matches(event, [p]) for event in ALL_EVENTS)]
        if len(unknown) == len(sink.events):
            out.append(
                f"{key}: no event syncd emits matches {_listed(unknown)}: sink {sink.name!r} receives"
                " nothing (events look like 'order.shipped'; patterns like 'order.*', '*.deleted')"
            )
        elif not any(matches(event, sink.events) for event in emitted):
            out.append(
                f"{key}: sink {sink.name!r} matches only events of resources not in sync.resources"
                f" ({', '.join(cfg.sync.resources)}): it receives nothing"
            )
        elif unknown:
            out.append(f"{key}: no event syncd emits matches {_listed(unknown)} (a typo?)")
    return out


def _listed(patterns: list[str]) -> str:
    return ", ".join(repr(p) for p in patterns)
