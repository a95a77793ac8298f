"""The value syntaxes of the config file: durations like "30s", sizes like "1MiB", rates
like "200/s", listen addresses, CIDR networks and URLs, each a pydantic type that parses
the file's text and prints back in the same syntax.

Every parse error says what is allowed, so config.py can name the key it came from.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from typing import Annotated

import httpx
from pydantic import AfterValidator, BeforeValidator, PlainSerializer

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


def parse_network(value: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(value, str):
        raise ValueError(f"expected a CIDR string like '10.0.0.0/8', got {value!r}")
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(
            f"{value!r} is not an IP network; use CIDR like '192.0.2.0/24' or '2001:db8::/32'"
        ) from None


def check_url(value: object) -> str:
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
    BeforeValidator(parse_network),
    PlainSerializer(str),
]
Url = Annotated[str, BeforeValidator(check_url)]
