"""One TOML file -> typed, immutable, validated config.

Validation is pydantic's; the value syntaxes the file uses (durations like "30s", sizes like
"1MiB", rates like "200/s", listen addresses, CIDRs) are syncd.config_values'; the change
feed's `[changes]` and `[[sinks]]` are syncd.config_feed's, `[nats]` syncd.config_nats's;
reading a secret is syncd.config_secrets'; this module adds the other sections, which secret
each needs, and the warnings. Every error names the file, the key and what
is allowed.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

from syncd.config_feed import SINK_TYPES, ChangesConfig, Sinks, redacted_sink_secrets, resolve_sink_secrets
from syncd.config_nats import NatsConfig, resolve_nats_token
from syncd.config_secrets import Secrets, read_secret_file, resolve_secret
from syncd.config_values import (
    MAX_DURATION,
    Duration,
    Listen,
    ListenAddress,
    Network,
    Rate,
    Size,
    Url,
    between,
    size_between,
)
from syncd.contract import RESOURCES, RETRY_SCHEDULE, VISIBILITY_LAG, Resource
from syncd.errors import ConfigError
from syncd.signatures import make_verifier

DEFAULT_CONFIG_PATH = "/etc/syncd/config.toml"
CONFIG_ENV = "SYNCD_CONFIG"
#: File names looked up in $CREDENTIALS_DIRECTORY (systemd LoadCredential=).
API_KEY_CREDENTIAL = "petstore-api-key"
WEBHOOK_SECRET_CREDENTIAL = "petstore-webhook-secret"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ApiConfig(_Section):
    base_url: Url = "https://api.petstoreapi.com/v1"
    api_key_env: str = "PETSTORE_API_KEY"
    api_key_file: str | None = None
    timeout: Annotated[Duration, between(0.1, 3600.0)] = 10.0
    connect_timeout: Annotated[Duration, between(0.1, 3600.0)] = 5.0
    max_connections: int = Field(default=10, ge=1, le=100)
    max_response: Size = 64 * 1024 * 1024
    rate_limit: Rate | None = None
    #: How late the API lists a change at most (the contract's 10s). A relist spares what
    #: changed within this plus poll.lookback; an API known to be faster (a simulator run
    #: with a shorter lag) lets relists tombstone hard deletes that much sooner.
    visibility_lag: Annotated[Duration, between(0.0, 3600.0)] = VISIBILITY_LAG

    @field_validator("max_response")
    @classmethod
    def _sane_max_response(cls, value: int) -> int:
        if not 1024 <= value <= 4 * 1024**3:
            raise ValueError("must be between 1KiB and 4GiB")
        return value

    @field_validator("rate_limit")
    @classmethod
    def _positive_rate(cls, value: float | None) -> float | None:
        if value is not None and not 0 < value <= 1e6:
            raise ValueError("must be above 0 (e.g. '10/s'); leave it unset for no limit")
        return value


class StoreConfig(_Section):
    path: str = "/var/lib/syncd/mirror.db"

    @field_validator("path")
    @classmethod
    def _a_file(cls, value: str) -> str:
        # SQLite takes "" and ":memory:" as a temporary database: everything lost at exit.
        if not value.strip() or value == ":memory:" or value.startswith("file:"):
            raise ValueError(f"{value!r} is not a file path; the store must be a file that outlives syncd")
        if "\0" in value:
            raise ValueError("must not contain a NUL character")
        return value


class SyncConfig(_Section):
    mode: Literal["push", "poll"] = "push"
    resources: tuple[Resource, ...] = RESOURCES

    @field_validator("resources", mode="before")
    @classmethod
    def _list_to_tuple(cls, value: object) -> object:
        if isinstance(value, list):
            if len(set(value)) != len(value):
                raise ValueError("resources must not repeat")
            if not value:
                raise ValueError("list at least one of orders, customers, inventory")
            return tuple(value)
        return value


class PollConfig(_Section):
    interval: Annotated[Duration, between(0.1, MAX_DURATION)] = 30.0
    safety_interval: Annotated[Duration, between(0.1, MAX_DURATION)] = 600.0
    lookback: Annotated[Duration, between(0.0, 86400.0)] = 15.0
    page_size: int = Field(default=500, ge=1, le=1000)
    full_relist_interval: Annotated[Duration, between(1.0, MAX_DURATION)] = 86400.0
    jitter: Annotated[Duration, between(0.0, 3600.0)] = 1.0
    #: A record stamped further ahead of the API's clock is mirrored but does not move the cursor.
    max_clock_skew: Annotated[Duration, between(0.0, 86400.0)] = 300.0
    #: Pages one listing may take; a listing that goes on past it ends with an error.
    max_pages: int = Field(default=100_000, ge=1, le=10_000_000)
    #: A relist that would tombstone more than this share of the live records holds back.
    max_tombstone_ratio: float = Field(default=0.1, ge=0.0, le=1.0, allow_inf_nan=False)
    #: Tombstones a relist may always make whatever the ratio (small mirrors), unless they
    #: would be every live record.
    tombstone_floor: int = Field(default=10, ge=0, le=10_000_000)


class WebhookConfig(_Section):
    listen: Listen = ListenAddress("127.0.0.1", 8787)
    path: str = "/webhooks/petstore"
    scheme: Literal["petstore", "standard-webhooks", "stripe", "github"] = "petstore"
    secret_env: str = "PETSTORE_WEBHOOK_SECRET"
    secret_file: str | None = None
    #: 0 would refuse every signed timestamp; past a day, replay protection means little.
    tolerance: Annotated[Duration, between(1.0, 86400.0)] = 300.0
    #: Every body is buffered whole: the cap is also memory per request.
    max_body: Annotated[Size, size_between(1024, 64 * 1024**2)] = 1024 * 1024
    allow_ips: tuple[Network, ...] = ()
    trusted_proxies: tuple[Network, ...] = ()
    rate_limit: Rate = 200.0
    fetch_thin_events: bool = True
    dedupe_retention: Annotated[Duration, between(1.0, MAX_DURATION)] = 7 * 86400.0
    audit_retention: Annotated[Duration, between(1.0, MAX_DURATION)] = 7 * 86400.0
    tls_cert: str | None = None
    tls_key: str | None = None
    header_timeout: Duration = 10.0
    body_timeout: Duration = 10.0
    idle_timeout: Duration = 15.0
    max_header_bytes: Size = Field(default=32 * 1024, ge=1024, le=16 * 1024 * 1024)
    max_headers: int = Field(default=100, ge=8, le=10_000)
    max_connections: int = Field(default=1024, ge=16, le=65_536)
    #: Deliveries acknowledged and not yet applied to the mirror the inbox may hold; past
    #: either bound new deliveries are answered 503 with Retry-After.
    max_backlog: int = Field(default=1_000_000, ge=1, le=1_000_000_000)
    max_backlog_bytes: Annotated[Size, size_between(1024, 1024**4)] = 1024**3
    #: "nats": deliveries come from `syncd receive` through JetStream, not from a listener here.
    inbox: Literal["sqlite", "nats"] = "sqlite"
    #: `syncd receive`: longest wait for JetStream's PubAck before answering 503 (the
    #: provider gives up on a delivery after 5 s).
    ack_timeout: Annotated[Duration, between(0.1, 4.5)] = 2.0

    @field_validator("header_timeout", "body_timeout", "idle_timeout")
    @classmethod
    def _timeout_positive(cls, value: float) -> float:
        if not 0 < value <= 3600:
            raise ValueError("must be longer than 0s and at most 1h")
        return value

    @field_validator("allow_ips", "trusted_proxies", mode="before")
    @classmethod
    def _list_to_tuple(cls, value: object) -> object:
        return tuple(value) if isinstance(value, list) else value

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"{value!r} must start with '/'")
        return value

    # A retention shorter than the provider's ~31.6 h retry schedule is allowed (a retry
    # seen after its id was forgotten is decided again, and the reconciler finds it a
    # duplicate), but it costs work and muddles event outcomes: `check_warnings` says so.


class FallbackConfig(_Section):
    silence: Annotated[Duration, between(1.0, MAX_DURATION)] = 300.0
    missed_ratio: float = Field(default=0.05, ge=0.0, le=1.0, allow_inf_nan=False)
    #: Healthy checks in a row needed before leaving fallback (hysteresis against flapping).
    recover_after: int = Field(default=2, ge=1, le=100)


class AdminConfig(_Section):
    listen: Listen = ListenAddress("127.0.0.1", 9787)


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class Config(_Section):
    api: ApiConfig = ApiConfig()
    store: StoreConfig = StoreConfig()
    sync: SyncConfig = SyncConfig()
    poll: PollConfig = PollConfig()
    webhook: WebhookConfig = WebhookConfig()
    fallback: FallbackConfig = FallbackConfig()
    admin: AdminConfig = AdminConfig()
    log: LogConfig = LogConfig()
    changes: ChangesConfig = ChangesConfig()
    sinks: Sinks = ()
    nats: NatsConfig = NatsConfig()
    source: str = Field(default="<defaults>", exclude=True)
    secrets: Secrets = Field(default=Secrets(None, ()), exclude=True)

    def redacted(self) -> dict[str, Any]:
        """The effective config as TOML-shaped data, secrets shown only as where they come from."""
        data = self.model_dump(mode="json")
        data["secrets"] = {
            "api_key": "<set>" if self.secrets.api_key else "<missing>",
            "webhook_secrets": f"<{len(self.secrets.webhook_secrets)} set>",
            "sink_secrets": redacted_sink_secrets(self.sinks, self.secrets.sink_secrets),
            "nats_token": "<set>" if self.secrets.nats_token else "<none>",
        }
        return data


def resolve_config_path(explicit: str | None, env: Mapping[str, str] | None = None) -> str:
    """--config, then $SYNCD_CONFIG, then /etc/syncd/config.toml."""
    env = os.environ if env is None else env
    return explicit or env.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


def _describe_error(err: ErrorDetails) -> tuple[str, str]:
    loc = [str(p) for p in err["loc"] if not str(p).startswith(("function-", "lax-or-strict"))]
    # A sink's location holds its type after the index (sinks.0.http.url); the file says sinks.0.url.
    loc = [p for i, p in enumerate(loc) if not (p in SINK_TYPES and i and loc[i - 1].isdigit())]
    if err["type"] == "config_key" or err["type"].startswith("union_tag"):
        # An error of a whole table that names its key (config_feed.key_error), or a sink's type.
        loc.append(err.get("ctx", {}).get("key", "type"))
    # Drop pydantic's internal union/validator path segments so the key reads like the file.
    key = ".".join(p for p in loc if p not in ("str", "int", "float", "bool", "tuple", "list"))
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required key is missing"
    elif err["type"] == "union_tag_not_found":
        msg = f"required key is missing: one of {', '.join(SINK_TYPES)}"
    elif err["type"] == "union_tag_invalid":
        msg = f"{err.get('ctx', {}).get('tag')!r} is not one of {', '.join(SINK_TYPES)}"
    elif err["type"] == "tuple_type":
        # Sequences are tuples inside (immutable config); the file writes them as lists.
        msg = 'must be a list, like ["a", "b"]'
    return key, msg


def load_config(
    path: str | os.PathLike[str] | None,
    *,
    env: Mapping[str, str] | None = None,
    require_secrets: bool = True,
) -> Config:
    """Read, validate and resolve secrets. `path=None` gives the defaults."""
    env = os.environ if env is None else env
    source = str(path) if path is not None else "<defaults>"
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(source, None, "file not found") from None
        except OSError as exc:
            raise ConfigError(source, None, f"cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(source, None, f"not valid TOML: {exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(
                source, None, f"not valid TOML: not UTF-8 text (byte {exc.start}: {exc.reason})"
            ) from None
    for reserved in ("source", "secrets"):
        if reserved in raw:
            raise ConfigError(source, reserved, "unknown key")
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        key, msg = _describe_error(exc.errors()[0])
        extra = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise ConfigError(source, key or None, msg + extra) from None

    api_key = resolve_secret(
        source,
        "api",
        "api_key_env",
        cfg.api.api_key_env,
        cfg.api.api_key_file,
        API_KEY_CREDENTIAL,
        env,
    )
    webhook_raw = resolve_secret(
        source,
        "webhook",
        "secret_env",
        cfg.webhook.secret_env,
        cfg.webhook.secret_file,
        WEBHOOK_SECRET_CREDENTIAL,
        env,
    )
    secrets = tuple(s.strip() for s in (webhook_raw or "").split(",") if s.strip())
    if require_secrets:
        if not api_key:
            raise ConfigError(
                source,
                "api.api_key_env",
                f"no API key: set ${cfg.api.api_key_env}, api.api_key_file, "
                f"or the credential {API_KEY_CREDENTIAL!r} in $CREDENTIALS_DIRECTORY",
            )
        if cfg.sync.mode == "push" and not secrets:
            raise ConfigError(
                source,
                "webhook.secret_env",
                f"push mode needs a webhook secret: set ${cfg.webhook.secret_env} "
                f"(comma-separated for rotation), webhook.secret_file, or the credential "
                f"{WEBHOOK_SECRET_CREDENTIAL!r} in $CREDENTIALS_DIRECTORY",
            )
    if secrets:
        try:
            make_verifier(cfg.webhook.scheme, secrets, tolerance=cfg.webhook.tolerance)
        except ValueError as exc:
            key = "webhook.secret_file" if cfg.webhook.secret_file else "webhook.secret_env"
            raise ConfigError(source, key, f"unusable for scheme {cfg.webhook.scheme!r}: {exc}") from None
    if (cfg.webhook.tls_cert is None) != (cfg.webhook.tls_key is None):
        raise ConfigError(source, "webhook.tls_cert", "set both tls_cert and tls_key, or neither")
    if cfg.webhook.inbox == "nats" and cfg.sync.mode != "push":
        raise ConfigError(
            source, "webhook.inbox", '"nats" takes deliveries for push mode: set sync.mode = "push"'
        )
    sink_secrets = resolve_sink_secrets(source, cfg.sinks, env, read_secret_file, require=require_secrets)
    token = resolve_nats_token(source, cfg.nats, env, read_secret_file, require=require_secrets)
    return cfg.model_copy(
        update={"source": source, "secrets": Secrets(api_key, secrets, sink_secrets, token)}
    )


def check_warnings(cfg: Config) -> list[str]:
    """Settings that are valid but probably not what the operator wants."""
    out = []
    # The retry schedule's length, rounded up to the hour.
    if cfg.webhook.dedupe_retention < math.ceil(sum(RETRY_SCHEDULE) / 3600) * 3600:
        out.append(
            "webhook.dedupe_retention is shorter than the provider's retry schedule"
            f" (about {sum(RETRY_SCHEDULE) / 3600:.1f}h): "
            "late retries will be decided again instead of being recognised as duplicates"
        )
    if cfg.poll.lookback < cfg.api.visibility_lag:
        out.append(
            f"poll.lookback is shorter than the API's {cfg.api.visibility_lag:g}s visibility lag"
            " (api.visibility_lag):"
            " polls can miss late-committed changes"
        )
    if cfg.sync.mode == "push" and cfg.poll.safety_interval < cfg.poll.interval:
        out.append(
            "poll.safety_interval is shorter than poll.interval: push mode would poll more than fallback does"
        )
    return out
