"""What a SIGHUP reload may change while the daemon runs, and what needs a restart.

Live: poll intervals, lookback and page size, the API key and webhook secrets (and where
they are read from), signature tolerance, body limit, rate limit, allowlists and trusted
proxies, retention, the fallback thresholds, logging, the sinks (added, removed or changed:
syncd.service.feed) and `[changes]` but `enabled`. Bound at start: anything that
opened a socket or a file, chose the mode or the resources, shaped the API client's
connections or scheduled the relist jobs.

`Reloader` reads the file, keeps what needs a restart as started and retunes the running
parts with the rest; an invalid file is rejected and the running config kept.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from syncd.api import PetstoreClient
from syncd.config import Config
from syncd.config_nats import NatsConfig
from syncd.errors import ConfigError
from syncd.logs import SecretRedactor, set_level, setup_logging
from syncd.service.running import Running

log = logging.getLogger(__name__)

#: (section, key) pairs a reload cannot change.
RESTART_ONLY: tuple[tuple[str, str], ...] = (
    ("api", "base_url"),
    ("api", "timeout"),
    ("api", "connect_timeout"),
    ("api", "max_connections"),
    ("store", "path"),
    ("sync", "mode"),
    ("sync", "resources"),
    ("webhook", "listen"),
    ("webhook", "path"),
    ("webhook", "scheme"),
    ("webhook", "tls_cert"),
    ("webhook", "tls_key"),
    ("webhook", "fetch_thin_events"),
    ("admin", "listen"),
    ("poll", "full_relist_interval"),
    ("poll", "jitter"),
    # The writer's store records the log or not from its start.
    ("changes", "enabled"),
    ("webhook", "inbox"),
    # The JetStream connection, streams and consumer are made once, at start.
    *(("nats", key) for key in NatsConfig.model_fields),
)
_SECTIONS = ("api", "store", "sync", "poll", "webhook", "fallback", "admin", "log", "changes", "nats")


def _flat(cfg: Config) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for section in _SECTIONS:
        for key, value in getattr(cfg, section).model_dump(mode="json").items():
            out[f"{section}.{key}"] = value
    # Secrets are compared by value but never shown: the key names say what changed.
    out["secrets.api_key"] = cfg.secrets.api_key
    out["secrets.webhook_secrets"] = cfg.secrets.webhook_secrets
    for sink in cfg.sinks:
        out[f"sinks.{sink.name}"] = sink.model_dump(mode="json")
        out[f"secrets.sink_secrets.{sink.name}"] = cfg.secrets.sink_secrets.get(sink.name)
    return out


def _restart_only(key: str) -> bool:
    section, name = key.split(".", 1)
    return (section, name) in RESTART_ONLY


def changed_keys(old: Config, new: Config) -> list[str]:
    a, b = _flat(old), _flat(new)
    # Union: a sink added or removed is a key only one side has.
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def restart_only_changes(started: Config, new: Config) -> list[str]:
    """Keys the new config changes that only a restart applies."""
    return [k for k in changed_keys(started, new) if _restart_only(k)]


def apply_live(started: Config, new: Config) -> Config:
    """The config to run with after a reload: `new`, with every restart-only key kept as
    started."""
    updates: dict[str, Any] = {}
    for section in _SECTIONS:
        kept = {k: getattr(getattr(started, section), k) for s, k in RESTART_ONLY if s == section}
        if kept:
            updates[section] = getattr(new, section).model_copy(update=kept)
    return new.model_copy(update=updates)


def secret_values(cfg: Config) -> list[str]:
    """What the log redactor hides: every secret the config holds."""
    values = list(cfg.secrets.webhook_secrets)
    if cfg.secrets.api_key:
        values.append(cfg.secrets.api_key)
    values.extend(secret for secret in cfg.secrets.sink_secrets.values() if secret)
    return values


def retune_client(client: PetstoreClient, previous: Config, live: Config) -> None:
    """The API key and the request rate apply to the next request; connections stay."""
    if live.secrets.api_key and live.secrets.api_key != previous.secrets.api_key:
        client.set_api_key(live.secrets.api_key)
    if client.budget.rate != live.api.rate_limit:
        client.budget.set_rate(live.api.rate_limit)


def retune(running: Running, previous: Config, live: Config) -> None:
    """Apply a reloaded config to the running parts."""
    running.poller.cfg = live
    retune_client(running.client, previous, live)
    if running.push is not None and running.push.receiver is not None:
        running.push.receiver.update_settings(live.webhook, live.secrets.webhook_secrets)
    if running.push is not None:
        running.push.inbox.backlog.set_limits(live.webhook.max_backlog, live.webhook.max_backlog_bytes)
    running.modes.reconfigure(live)
    # The reload may have fixed a refused API key.
    running.scheduler.resume_stopped()


class Reloader:
    """Takes a new config from `load` (the config file) on request."""

    def __init__(
        self, started: Config, load: Callable[[], Config], *, redactor: SecretRedactor | None = None
    ) -> None:
        """`started`: what the listeners, store and mode were started with; reloads cannot
        change it. `redactor`: the log redactor to give the new secrets, if logging has one."""
        self.started = started
        self._load = load
        self.redactor = redactor

    async def reload(self, current: Config, running: Running | None) -> Config | None:
        """The config to run with from now on, applied to `running`; None when the file was
        rejected. Either way the sinks' pending offset resets are made: `syncd sinks reset`
        asks for them with a SIGHUP, whatever the file holds."""
        try:
            new = await asyncio.to_thread(self._load)
        except Exception as exc:
            log.error(
                "config reload rejected, keeping the running config: %s",
                exc,
                exc_info=not isinstance(exc, ConfigError | OSError),
            )
            live = None
        else:
            live = await self._take(current, new, running)
        if running is not None:
            await running.feed.apply_resets()
        return live

    async def _take(self, current: Config, new: Config, running: Running | None) -> Config:
        for key in restart_only_changes(self.started, new):
            log.warning("config reload: %s changed; it takes effect after a restart", key)
        live = apply_live(self.started, new)
        changed = changed_keys(current, live)
        self._retune_logging(current, live)
        if running is not None:
            retune(running, current, live)
            await running.feed.reconfigure(live)
        log.info(
            "config reloaded from %s; changed: %s",
            live.source,
            ", ".join(changed) or "nothing",
            extra={"changed": changed},
        )
        return live

    def _retune_logging(self, previous: Config, live: Config) -> None:
        if self.redactor is not None:
            self.redactor.set_secrets(secret_values(live))
        if live.log.format != previous.log.format:
            self.redactor = setup_logging(live.log, secrets=secret_values(live))
        else:
            set_level(live.log.level)
