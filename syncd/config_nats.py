"""`[nats]`: where the JetStream cluster is, which streams syncd uses, how streams it
creates are made, and this mirror's durable consumer. Resolving its token.

Beside config.py for the same reason as config_feed.py: one concept, and config.py holds
the rest. Connecting and creating streams is syncd.jetstream's work.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Annotated, Final
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from syncd.config_values import Duration, between
from syncd.errors import ConfigError

#: Stream and consumer names: JetStream refuses '.', '*', '>' and whitespace in them, and
#: they end up in subjects of its API; a small alphabet keeps them safe everywhere.
_NAME_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SCHEMES: Final = ("nats", "tls")


def _servers(value: object) -> object:
    if isinstance(value, str):
        raise ValueError('must be a list of URLs, like ["nats://127.0.0.1:4222"]')
    if isinstance(value, list):
        if not value:
            raise ValueError('list at least one server, like ["nats://127.0.0.1:4222"]')
        return tuple(value)
    return value


class NatsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    servers: Annotated[tuple[str, ...], BeforeValidator(_servers)] = ("nats://127.0.0.1:4222",)
    #: A NATS credentials file (JWT and NKey seed), as `nats-py` reads it.
    credentials_file: str | None = None
    #: An environment variable holding a token, for servers configured with one.
    token_env: str | None = None
    inbox_stream: str = "SYNCD_INBOX"
    changes_stream: str = "SYNCD_CHANGES"
    #: Replicas of a stream syncd creates; an existing stream is used as it is.
    replicas: int = Field(default=3, ge=1, le=5)
    #: JetStream's own deduplication window (by Nats-Msg-Id) of a stream syncd creates.
    duplicate_window: Annotated[Duration, between(1.0, 7 * 86400.0)] = 120.0
    #: This mirror's durable consumer of the inbox stream; default `syncd-<mirror_id>`.
    consumer: str | None = None
    #: Deliveries the consumer asks for at once (one SQLite transaction each batch).
    batch_size: int = Field(default=256, ge=1, le=10_000)
    #: How long a message pulled and not yet acked is held before JetStream redelivers it.
    ack_wait: Annotated[Duration, between(1.0, 3600.0)] = 30.0
    connect_timeout: Annotated[Duration, between(0.1, 60.0)] = 2.0

    @field_validator("servers")
    @classmethod
    def _urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for url in value:
            parts = urlsplit(url)
            if parts.scheme not in _SCHEMES or not parts.hostname:
                raise ValueError(f"{url!r} is not a NATS URL: write nats://HOST:PORT (or tls://HOST:PORT)")
            try:
                parts.port  # noqa: B018 (raises on a bad port)
            except ValueError:
                raise ValueError(f"{url!r} has an invalid port") from None
            if parts.password:
                raise ValueError(f"{url!r} holds a password: use token_env or credentials_file")
        return value

    @field_validator("inbox_stream", "changes_stream", "consumer")
    @classmethod
    def _names(cls, value: str | None) -> str | None:
        if value is not None and not _NAME_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a JetStream name: use 1 to 64 of A-Z, a-z, 0-9, '_' and '-'")
        return value

    @field_validator("token_env", "credentials_file")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty; leave the key out instead")
        return value

    @model_validator(mode="after")
    def _distinct_streams(self) -> NatsConfig:
        if self.inbox_stream == self.changes_stream:
            raise ValueError("inbox_stream and changes_stream must be different streams")
        return self

    def consumer_name(self, mirror_id: str) -> str:
        """The durable consumer of this mirror: the configured one, else `syncd-<mirror_id>`."""
        return self.consumer or f"syncd-{mirror_id}"


def resolve_nats_token(
    source: str,
    cfg: NatsConfig,
    env: Mapping[str, str],
    read_file: Callable[[str, str, str], str],
    *,
    require: bool,
) -> str | None:
    """The token from `token_env`; a credentials file is checked to be readable here, so a
    wrong path fails at start and not on the first reconnect."""
    if cfg.credentials_file is not None:
        read_file(source, "nats.credentials_file", cfg.credentials_file)
    if cfg.token_env is None:
        return None
    token = env.get(cfg.token_env, "").strip()
    if not token and require:
        raise ConfigError(source, "nats.token_env", f"${cfg.token_env} is not set (or empty)")
    return token or None
