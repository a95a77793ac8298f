"""One TOML file -> typed, immutable, validated config.

Validation is pydantic's; this module adds the value syntaxes the file uses (durations like
"30s", sizes like "1MiB", rates like "200/s", listen addresses, CIDRs) and secret resolution.
Every error names the file, the key and what is allowed.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
)
from pydantic_core import ErrorDetails

from syncd.contract import RESOURCES, RETRY_SCHEDULE, VISIBILITY_LAG, Resource
from syncd.errors import ConfigError
from syncd.signatures import make_verifier

DEFAULT_CONFIG_PATH = "/etc/syncd/config.toml"
CONFIG_ENV = "SYNCD_CONFIG"
#: File names looked up in $CREDENTIALS_DIRECTORY (systemd LoadCredential=).
API_KEY_CREDENTIAL = "petstore-api-key"
WEBHOOK_SECRET_CREDENTIAL = "petstore-webhook-secret"

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
}
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h)\s*$")
#: No duration anywhere needs more than a year; past that, arithmetic on timestamps and
#: timers overflows (datetime, asyncio) instead of failing here with the key's name.
MAX_DURATION = 365 * 86400.0
#: Rates are events per second; more than this is no limit at all, and zero divides by zero.
MAX_RATE = 1_000_000.0


def parse_duration(value: object) -> float:
    """'500ms', '30s', '15m', '24h', '7d' -> seconds."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"expected a duration string like '500ms', '30s', '15m', '24h', '7d', got {value!r}")
    m = _DURATION_RE.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a duration; use a number and one of ms, s, m, h, d (e.g. '30s')")
    seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if not seconds <= MAX_DURATION:
        raise ValueError(f"{value!r} is longer than {format_duration(MAX_DURATION)}")
    return seconds


def format_duration(seconds: float) -> str:
    for unit in ("d", "h", "m", "s"):
        factor = _DURATION_UNITS[unit]
        if seconds >= factor and math.isclose(seconds / factor, round(seconds / factor)):
            return f"{round(seconds / factor)}{unit}"
    return f"{round(seconds * 1000)}ms" if seconds < 1 else f"{seconds:g}s"


def parse_size(value: object) -> int:
    """'64KiB', '1MiB', '1000' -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"{value} is not a size: sizes are not negative")
        return value
    if not isinstance(value, str) or not (m := _SIZE_RE.match(value)):
        raise ValueError(
            f"{value!r} is not a size; use bytes or a number with B, KiB, MiB, GiB, KB, MB, GB (e.g. '1MiB')"
        )
    return int(m.group(1)) * _SIZE_UNITS[m.group(2)]


def format_size(size: int) -> str:
    for unit in ("GiB", "MiB", "KiB"):
        if size >= _SIZE_UNITS[unit] and size % _SIZE_UNITS[unit] == 0:
            return f"{size // _SIZE_UNITS[unit]}{unit}"
    return f"{size}B"


def parse_rate(value: object) -> float:
    """'200/s', '600/m' -> events per second."""
    if not isinstance(value, str) or not (m := _RATE_RE.match(value)):
        raise ValueError(f"{value!r} is not a rate; use a number per s, m or h (e.g. '200/s')")
    rate = float(m.group(1)) / {"s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2)]
    if not 0 < rate <= MAX_RATE:
        raise ValueError(f"{value!r} is not a usable rate: it must be above 0 and at most {MAX_RATE:g}/s")
    return rate


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(value: object) -> ListenAddress:
    """'127.0.0.1:8787', '[::1]:8787', '0.0.0.0:0' -> host and port."""
    if isinstance(value, ListenAddress):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected 'host:port' like '127.0.0.1:8787', got {value!r}")
    m = re.match(r"^\[([0-9A-Fa-f:.]+)\]:(\d+)$", value) or re.match(r"^([^:\[\]]+):(\d+)$", value)
    if not m:
        raise ValueError(f"{value!r} is not 'host:port' (IPv6 as '[::1]:8787')")
    port = int(m.group(2))
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is outside 0..65535")
    return ListenAddress(m.group(1), port)


def _parse_network(value: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(value, str):
        raise ValueError(f"expected a CIDR string like '10.0.0.0/8', got {value!r}")
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(
            f"{value!r} is not an IP network; use CIDR like '192.0.2.0/24' or '2001:db8::/32'"
        ) from None


def _check_url(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a URL string, got {value!r}")
    try:
        url = httpx.URL(value)
    except Exception:
        raise ValueError(f"{value!r} is not a URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{value!r} is not an http(s) URL with a host")
    return value.rstrip("/")


def _show_duration(seconds: float) -> str:
    return "0s" if seconds == 0 else format_duration(seconds)


def between(low: float, high: float) -> AfterValidator:
    """A duration bound, said in the file's own syntax ("between 100ms and 1h")."""

    def check(seconds: float) -> float:
        if not low <= seconds <= high:
            raise ValueError(f"must be between {_show_duration(low)} and {_show_duration(high)}")
        return seconds

    return AfterValidator(check)


def size_between(low: int, high: int) -> AfterValidator:
    def check(size: int) -> int:
        if not low <= size <= high:
            raise ValueError(f"must be between {format_size(low)} and {format_size(high)}")
        return size

    return AfterValidator(check)


Duration = Annotated[float, BeforeValidator(parse_duration), PlainSerializer(format_duration)]
Size = Annotated[int, BeforeValidator(parse_size), PlainSerializer(format_size)]
Rate = Annotated[float, BeforeValidator(parse_rate), PlainSerializer(lambda r: f"{r:g}/s")]
Listen = Annotated[ListenAddress, BeforeValidator(parse_listen), PlainSerializer(str)]
Network = Annotated[
    ipaddress.IPv4Network | ipaddress.IPv6Network,
    BeforeValidator(_parse_network),
    PlainSerializer(str),
]
Url = Annotated[str, BeforeValidator(_check_url)]


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
    idle_timeout: Duration = 15.0
    max_header_bytes: Size = Field(default=32 * 1024, ge=1024, le=16 * 1024 * 1024)
    max_headers: int = Field(default=100, ge=8, le=10_000)
    max_connections: int = Field(default=1024, ge=16, le=65_536)

    @field_validator("header_timeout", "idle_timeout")
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


@dataclass(frozen=True)
class Secrets:
    """Resolved secret values; never printed."""

    api_key: str | None
    webhook_secrets: tuple[str, ...]


class Config(_Section):
    api: ApiConfig = ApiConfig()
    store: StoreConfig = StoreConfig()
    sync: SyncConfig = SyncConfig()
    poll: PollConfig = PollConfig()
    webhook: WebhookConfig = WebhookConfig()
    fallback: FallbackConfig = FallbackConfig()
    admin: AdminConfig = AdminConfig()
    log: LogConfig = LogConfig()
    source: str = Field(default="<defaults>", exclude=True)
    secrets: Secrets = Field(default=Secrets(None, ()), exclude=True)

    def redacted(self) -> dict[str, Any]:
        """The effective config as TOML-shaped data, secrets shown only as where they come from."""
        data = self.model_dump(mode="json")
        data["secrets"] = {
            "api_key": "<set>" if self.secrets.api_key else "<missing>",
            "webhook_secrets": f"<{len(self.secrets.webhook_secrets)} set>",
        }
        return data


def resolve_config_path(explicit: str | None, env: Mapping[str, str] | None = None) -> str:
    """--config, then $SYNCD_CONFIG, then /etc/syncd/config.toml."""
    env = os.environ if env is None else env
    return explicit or env.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


def _describe_error(err: ErrorDetails) -> tuple[str, str]:
    loc = [str(p) for p in err["loc"] if not str(p).startswith(("function-", "lax-or-strict"))]
    # Drop pydantic's internal union/validator path segments so the key reads like the file.
    key = ".".join(p for p in loc if p not in ("str", "int", "float", "bool", "tuple", "list"))
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required key is missing"
    elif err["type"] == "tuple_type":
        # Sequences are tuples inside (immutable config); the file writes them as lists.
        msg = 'must be a list, like ["a", "b"]'
    return key, msg


def _read_secret_file(source: str, key: str, path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(source, key, f"cannot read secret file {path!r}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            source, key, f"secret file {path!r} is not UTF-8 text (byte {exc.start}: {exc.reason})"
        ) from None


def _resolve_secret(
    source: str,
    section: str,
    env_key: str,
    env_name: str,
    file_name: str | None,
    credential: str,
    env: Mapping[str, str],
) -> str | None:
    if file_name:
        return _read_secret_file(source, f"{section}.{env_key.replace('_env', '_file')}", file_name)
    if env.get(env_name):
        return env[env_name]
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (Path(cred_dir) / credential).is_file():
        return _read_secret_file(source, f"{section}.{env_key}", str(Path(cred_dir) / credential))
    return None


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

    api_key = _resolve_secret(
        source,
        "api",
        "api_key_env",
        cfg.api.api_key_env,
        cfg.api.api_key_file,
        API_KEY_CREDENTIAL,
        env,
    )
    webhook_raw = _resolve_secret(
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
    return cfg.model_copy(update={"source": source, "secrets": Secrets(api_key, secrets)})


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
    if cfg.poll.lookback < VISIBILITY_LAG:
        out.append(
            f"poll.lookback is shorter than the API's {VISIBILITY_LAG:g}s visibility lag:"
            " polls can miss late-committed changes"
        )
    if cfg.sync.mode == "push" and cfg.poll.safety_interval < cfg.poll.interval:
        out.append(
            "poll.safety_interval is shorter than poll.interval: push mode would poll more than fallback does"
        )
    return out
