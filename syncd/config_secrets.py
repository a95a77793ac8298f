"""Secrets of the config: read from a file, an environment variable or a systemd
credential ($CREDENTIALS_DIRECTORY, LoadCredential=), and kept in `Secrets`, which never
prints them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from syncd.errors import ConfigError


# repr=False: a config object in a log line or a traceback must not print the values.
@dataclass(frozen=True, repr=False)
class Secrets:
    """Resolved secret values; never printed."""

    api_key: str | None
    webhook_secrets: tuple[str, ...]
    #: http sink name -> its signing secret.
    sink_secrets: Mapping[str, str] = field(default_factory=dict)
    nats_token: str | None = None


def read_secret_file(source: str, key: str, path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(source, key, f"cannot read secret file {path!r}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            source, key, f"secret file {path!r} is not UTF-8 text (byte {exc.start}: {exc.reason})"
        ) from None


def resolve_secret(
    source: str,
    section: str,
    env_key: str,
    env_name: str,
    file_name: str | None,
    credential: str,
    env: Mapping[str, str],
) -> str | None:
    if file_name:
        return read_secret_file(source, f"{section}.{env_key.replace('_env', '_file')}", file_name)
    if env.get(env_name):
        return env[env_name]
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (Path(cred_dir) / credential).is_file():
        return read_secret_file(source, f"{section}.{env_key}", str(Path(cred_dir) / credential))
    return None
