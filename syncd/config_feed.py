"""The change feed's part of the config: `[changes]` (the change log) and `[[sinks]]` (where
its changes are delivered), and resolving the sinks' signing secrets.

Beside config.py rather than in it: the feed is one concept, and config.py holds the rest.
Like config.py this module knows the file's syntax only; turning a sink's config into a
running sink is syncd.feed.build's work (config cannot import the feed, it sits below it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from syncd.config_values import MAX_DURATION, Duration, between, check_url
from syncd.errors import ConfigError
from syncd.signatures import sign

#: The `type` of each sink table, in the order the docs list them.
SINK_TYPES: Final = ("http", "exec", "nats")
#: A sink's name is a metrics label, an offset key, a file name (its credential) and an
#: environment value: a small alphabet keeps it safe in all of them.
_NAME_RE: Final = re.compile(r"[a-z0-9_-]{1,64}")
_ENV_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Set by syncd for every exec sink; a sink's own `env` may not override it.
SINK_NAME_ENV: Final = "SYNCD_SINK"


def key_error(key: str, message: str) -> PydanticCustomError:
    """An error about a whole table that still names the key it is about (config.py's
    error reader appends `key` to the table's location)."""
    return PydanticCustomError("config_key", message, {"key": key})


class _Section(BaseModel):
    # The same rules as config.py's sections: unknown keys are errors, nothing is coerced.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ChangesConfig(_Section):
    #: Off: no `_changes` rows are written (sinks then have nothing to deliver).
    enabled: bool = True
    #: Also log the first full sync of an empty mirror (changes marked "initial": true).
    include_initial: bool = False
    #: Changes every sink has delivered are pruned once older than this.
    retention: Annotated[Duration, between(1.0, MAX_DURATION)] = 7 * 86400.0
    prune_interval: Annotated[Duration, between(1.0, 86400.0)] = 60.0


def _as_tuple(one: str, many: str, example: str, note: str = "") -> Callable[[object], object]:
    """TOML arrays arrive as lists; config values are tuples (immutable). A bare string
    would otherwise be refused with a generic "must be a list"."""

    def convert(value: object) -> object:
        if isinstance(value, str):
            raise ValueError(f"must be a list of {many}, like {example}{note}")
        if isinstance(value, list):
            if not value:
                raise ValueError(f"list at least one {one}, like {example}")
            return tuple(value)
        return value

    return convert


def _sink_url(value: object) -> object:
    check_url(value)
    # Unlike the API's base URL, a sink's URL is used as written: a trailing slash can be
    # part of the route the receiver serves, and redirects are not followed.
    return value


class _SinkConfig(_Section):
    name: str
    # Declared here so that it reads second wherever a sink is printed; each type narrows it.
    type: Literal["http", "exec", "nats"]
    events: Annotated[
        tuple[str, ...],
        BeforeValidator(_as_tuple("event pattern", "event patterns", '["order.*", "customer.deleted"]')),
    ] = ("*",)
    timeout: Annotated[Duration, between(0.1, 3600.0)] = 10.0
    on_failure: Literal["block", "skip"] = "block"
    max_attempts: int = Field(default=10, ge=1, le=1_000_000)
    batch_size: int = Field(default=100, ge=1, le=10_000)
    start: Literal["head", "beginning"] = "head"

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not _NAME_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a sink name: use 1 to 64 of a-z, 0-9, '_' and '-'")
        return value

    @field_validator("events")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            if not pattern.strip():
                raise ValueError('an event pattern must not be empty; "*" is every event')
        return value


class HttpSinkConfig(_SinkConfig):
    """POSTs each change, signed as Standard Webhooks; `batch_size` is how many changes the
    runner reads at once (the sink still sends them one request at a time)."""

    type: Literal["http"] = "http"
    url: Annotated[str, BeforeValidator(_sink_url)]
    secret_env: str | None = None
    secret_file: str | None = None

    @model_validator(mode="after")
    def _one_secret(self) -> HttpSinkConfig:
        if self.secret_env is None and self.secret_file is None:
            raise key_error(
                "secret_env",
                "an http sink signs what it sends: set secret_env (an environment variable) "
                "or secret_file to its whsec_ secret",
            )
        if self.secret_env is not None and self.secret_file is not None:
            raise key_error("secret_file", "set secret_env or secret_file, not both")
        return self

    @field_validator("secret_env", "secret_file")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty; leave the key out instead")
        return value

    @property
    def secret_key(self) -> str:
        """The key the secret comes from, as errors name it."""
        return "secret_file" if self.secret_file is not None else "secret_env"


class ExecSinkConfig(_SinkConfig):
    """Runs `command` (no shell) per batch of up to `batch_size` changes on its stdin."""

    type: Literal["exec"] = "exec"
    command: Annotated[
        tuple[str, ...],
        BeforeValidator(
            _as_tuple("argument", "arguments", '["/usr/local/bin/handler", "--quiet"]', " (no shell runs it)")
        ),
    ]
    #: Added to the small environment the command gets (never syncd's whole environment).
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("command")
    @classmethod
    def _runnable(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value[0].strip():
            raise ValueError("the first argument is the program to run and must not be empty")
        if any("\0" in arg for arg in value):
            raise ValueError("arguments must not contain a NUL character")
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _ENV_NAME_RE.fullmatch(name):
                raise ValueError(f"{name!r} is not an environment variable name (letters, digits, '_')")
            if name == SINK_NAME_ENV:
                raise ValueError(f"{SINK_NAME_ENV} is set by syncd to the sink's name")
            if "\0" in text:
                raise ValueError(f"the value of {name} must not contain a NUL character")
        return value


class NatsSinkConfig(_SinkConfig):
    """Publishes each change to `[nats] changes_stream`; a batch's publishes are all in
    flight at once and the offset moves only past their PubAcks. Batches are larger than the
    other sinks' by default: a publish costs little, a round trip to the cluster much more."""

    type: Literal["nats"] = "nats"
    batch_size: int = Field(default=1000, ge=1, le=10_000)


SinkConfig = Annotated[HttpSinkConfig | ExecSinkConfig | NatsSinkConfig, Field(discriminator="type")]


def _sink_list(value: object) -> object:
    if isinstance(value, dict):
        raise ValueError("write each sink as its own [[sinks]] table")
    return tuple(value) if isinstance(value, list) else value


def _unique_names(sinks: tuple[SinkConfig, ...]) -> tuple[SinkConfig, ...]:
    seen: dict[str, int] = {}
    for index, sink in enumerate(sinks):
        if sink.name in seen:
            # Offsets, dead letters and metrics are kept per name: two sinks with one name
            # would share (and corrupt) one offset.
            raise key_error(f"{index}.name", f"{sink.name!r} is already the name of sinks.{seen[sink.name]}")
        seen[sink.name] = index
    return sinks


#: `Config.sinks`: the `[[sinks]]` tables, each validated as its `type`, names unique.
Sinks = Annotated[tuple[SinkConfig, ...], BeforeValidator(_sink_list), AfterValidator(_unique_names)]


def sink_credential(name: str) -> str:
    """The file looked up in $CREDENTIALS_DIRECTORY (systemd LoadCredential=) when a sink's
    secret_env is unset."""
    return f"sink-{name}-secret"


def resolve_sink_secrets(
    source: str,
    sinks: Sequence[SinkConfig],
    env: Mapping[str, str],
    read_file: Callable[[str, str, str], str],
    *,
    require: bool,
) -> dict[str, str]:
    """Each http sink's secret by sink name: its secret_file, else its environment
    variable, else its credential. `read_file(source, key, path)` is config.py's reader, so
    an unreadable file fails in the same words as every other secret file. A secret that
    is found is checked whether or not secrets are required: a wrong one fails at start,
    not on every delivery."""
    out: dict[str, str] = {}
    for index, sink in enumerate(sinks):
        if not isinstance(sink, HttpSinkConfig):
            continue
        prefix = f"sinks.{index}"
        key = f"{prefix}.{sink.secret_key}"
        secret: str | None = None
        if sink.secret_file is not None:
            secret = read_file(source, key, sink.secret_file)
        elif sink.secret_env is not None and env.get(sink.secret_env, "").strip():
            secret = env[sink.secret_env].strip()
        elif (cred_dir := env.get("CREDENTIALS_DIRECTORY")) and (
            cred := Path(cred_dir) / sink_credential(sink.name)
        ).is_file():
            secret = read_file(source, key, str(cred))
        if not secret:
            if not require:
                continue
            if sink.secret_file is not None:
                raise ConfigError(source, key, f"secret file {sink.secret_file!r} is empty")
            raise ConfigError(
                source,
                key,
                f"no secret for sink {sink.name!r}: set ${sink.secret_env}, "
                f"or the credential {sink_credential(sink.name)!r} in $CREDENTIALS_DIRECTORY",
            )
        try:
            sign("standard-webhooks", secret, b"", msg_id="check", timestamp=0)
        except ValueError as exc:
            raise ConfigError(source, key, f"unusable for sink {sink.name!r}: {exc}") from None
        out[sink.name] = secret
    return out


def redacted_sink_secrets(sinks: Sequence[SinkConfig], secrets: Mapping[str, str]) -> dict[str, str]:
    """Whether each http sink has its secret, never the secret."""
    return {
        sink.name: "<set>" if secrets.get(sink.name) else "<missing>"
        for sink in sinks
        if isinstance(sink, HttpSinkConfig)
    }
