"""Simulator settings: what the simulated shop does (`SimConfig`) and how badly it behaves
(`FaultConfig`).

Every fault knob is off at zero, so `FaultConfig()` is a perfectly behaved provider. The
presets are what `syncd simulate --faults none|default|harsh` and the demo use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from syncd.contract import RESOURCES, RETRY_SCHEDULE
from syncd.errors import ConfigError
from syncd.signatures import SCHEMES

#: The transient statuses the 5xx fault picks from.
FIVE_XX: tuple[int, ...] = (500, 502, 503, 504)


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Fault knobs. Rates are probabilities in [0, 1] applied per request or per delivery."""

    webhook_drop_rate: float = 0.0
    """A delivery is lost outright: never attempted."""
    webhook_duplicate_rate: float = 0.0
    """A delivery is sent twice (same eventId); the copy goes out after a random delay."""
    webhook_delay_rate: float = 0.0
    """A delivery waits a random 0..webhook_max_delay seconds first, so later ones overtake it."""
    webhook_max_delay: float = 0.0
    thin_event_rate: float = 0.0
    """A delivery carries only {"id": ...}; endpoints registered with "thin": true always do."""
    api_429_rate: float = 0.0
    retry_after: int = 1
    """Seconds announced in Retry-After on 429."""
    api_5xx_rate: float = 0.0
    api_hang_rate: float = 0.0
    hang_seconds: float = 15.0
    """How long a hanging request stalls before it is answered normally."""
    short_page_rate: float = 0.0
    """A listing page holds fewer than `limit` records although more follow."""
    cursor_expire_rate: float = 0.0
    """A cursor is refused as cursor_expired although it is younger than the TTL."""
    forbidden_resources: tuple[str, ...] = ()
    """The key lacks scope for these resources: 403."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_rate") and not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
                raise ConfigError("faults", f.name, f"must be a number in [0, 1], got {value!r}")
        if self.webhook_max_delay < 0 or self.hang_seconds < 0 or self.retry_after < 0:
            raise ConfigError("faults", None, "delays, hang_seconds and retry_after must be >= 0")
        unknown = set(self.forbidden_resources) - set(RESOURCES)
        if unknown:
            raise ConfigError(
                "faults",
                "forbidden_resources",
                f"unknown resources {sorted(unknown)}; valid: {', '.join(RESOURCES)}",
            )

    @classmethod
    def preset(cls, name: str) -> FaultConfig:
        try:
            return PRESETS[name]
        except KeyError:
            raise ConfigError(
                "faults", None, f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}"
            ) from None

    def replace(self, changes: Mapping[str, Any]) -> FaultConfig:
        """A copy with `changes` applied; unknown knob names are an error naming them."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise ConfigError(
                "faults", None, f"unknown knobs {sorted(unknown)}; valid: {', '.join(sorted(names))}"
            )
        values = dict(changes)
        if "forbidden_resources" in values:
            values["forbidden_resources"] = tuple(values["forbidden_resources"])
        return dataclasses.replace(self, **values)

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["forbidden_resources"] = list(self.forbidden_resources)
        return out


PRESETS: dict[str, FaultConfig] = {
    "none": FaultConfig(),
    # A realistic provider: the occasional loss, duplicate, late delivery and transient error.
    "default": FaultConfig(
        webhook_drop_rate=0.02,
        webhook_duplicate_rate=0.05,
        webhook_delay_rate=0.1,
        webhook_max_delay=2.0,
        thin_event_rate=0.05,
        api_429_rate=0.01,
        retry_after=1,
        api_5xx_rate=0.01,
        short_page_rate=0.05,
        cursor_expire_rate=0.001,
    ),
    "harsh": FaultConfig(
        webhook_drop_rate=0.2,
        webhook_duplicate_rate=0.2,
        webhook_delay_rate=0.5,
        webhook_max_delay=5.0,
        thin_event_rate=0.5,
        api_429_rate=0.1,
        retry_after=2,
        api_5xx_rate=0.1,
        api_hang_rate=0.02,
        hang_seconds=12.0,
        short_page_rate=0.3,
        cursor_expire_rate=0.05,
    ),
}


@dataclass(frozen=True, slots=True)
class SimConfig:
    """What the simulated shop is and does. Durations are seconds."""

    seed: int = 0
    rate: float = 10.0
    """Workload changes per second; 0 means no background workload (tests call `step`)."""
    api_key: str = "test-key"
    max_lag: float = 10.0
    """Upper bound of the visibility lag of a change in listings; 0 disables the lag."""
    time_scale: float = 1.0
    """Multiplies the webhook retry schedule and delivery timeout (0.001 in tests)."""
    scheme: str = "petstore"
    preload_orders: int = 0
    preload_customers: int = 0
    preload_inventory: int = 12
    preload_span: float = 30 * 86400.0
    """Preloaded records get updatedAt spread over this many seconds before start."""
    cursor_ttl: float = 600.0
    """A cursor older than this is refused with cursor_expired; 0 means cursors never expire."""
    delivery_timeout: float = 5.0
    min_delivery_timeout: float = 0.5
    """Floor of the scaled delivery timeout, so a busy loopback is not taken for a hang."""
    delivery_concurrency: int = 16
    delivery_queue_size: int = 10_000
    max_scheduled_deliveries: int = 100_000
    """Retries and delayed deliveries waiting for their time; beyond this they are dropped."""
    faults: FaultConfig = field(default_factory=FaultConfig)

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ConfigError(
                "simulator", "scheme", f"unknown scheme {self.scheme!r}; valid: {', '.join(SCHEMES)}"
            )
        checks = {
            "rate": self.rate >= 0,
            "max_lag": self.max_lag >= 0,
            "time_scale": self.time_scale > 0,
            "preload_orders": self.preload_orders >= 0,
            "preload_customers": self.preload_customers >= 0,
            "preload_inventory": self.preload_inventory >= 0,
            "preload_span": self.preload_span > 0,
            "cursor_ttl": self.cursor_ttl >= 0,
            "delivery_timeout": self.delivery_timeout > 0,
            "delivery_concurrency": self.delivery_concurrency >= 1,
            "delivery_queue_size": self.delivery_queue_size >= 1,
            "max_scheduled_deliveries": self.max_scheduled_deliveries >= 1,
        }
        for key, ok in checks.items():
            if not ok:
                raise ConfigError("simulator", key, f"out of range: {getattr(self, key)!r}")
        if not self.api_key:
            raise ConfigError("simulator", "api_key", "must not be empty")

    @property
    def retry_delays(self) -> tuple[float, ...]:
        return tuple(d * self.time_scale for d in RETRY_SCHEDULE)

    @property
    def effective_delivery_timeout(self) -> float:
        return max(self.delivery_timeout * self.time_scale, self.min_delivery_timeout)
