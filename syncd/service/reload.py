"""What a SIGHUP reload may change while the daemon runs, and what needs a restart.

Live: poll intervals, lookback and page size, the API key and webhook secrets (and where
they are read from), signature tolerance, body limit, rate limit, allowlists and trusted
proxies, retention, the fallback thresholds and logging. Bound at start: anything that
opened a socket or a file, chose the mode or the resources, shaped the API client's
connections or scheduled the relist jobs.
"""

from __future__ import annotations

from typing import Any

from syncd.config import Config

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
)
_SECTIONS = ("api", "store", "sync", "poll", "webhook", "fallback", "admin", "log")


def _flat(cfg: Config) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for section in _SECTIONS:
        for key, value in getattr(cfg, section).model_dump(mode="json").items():
            out[f"{section}.{key}"] = value
    # Secrets are compared by value but never shown: the key names say what changed.
    out["secrets.api_key"] = cfg.secrets.api_key
    out["secrets.webhook_secrets"] = cfg.secrets.webhook_secrets
    return out


def _restart_only(key: str) -> bool:
    section, name = key.split(".", 1)
    return (section, name) in RESTART_ONLY


def changed_keys(old: Config, new: Config) -> list[str]:
    a, b = _flat(old), _flat(new)
    return sorted(k for k in a if a[k] != b[k])


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
