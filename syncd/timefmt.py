"""RFC 3339 timestamps: parsed to instants, formatted the way the API writes them.

Every comparison of two timestamps in syncd (cursor, listing order, the relist's spare
window, lag) goes through here, never through string order: `10:00+05:30` is earlier than
`09:00Z`, and `2024-13-45T...` is no instant at all.

Accepted: `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`, with `t`/`z` in either case
(RFC 3339 allows both) and a fraction of any length (kept to the microsecond, truncated).
A leap second (`:60`) is clamped to `:59.999`: Python's datetime cannot hold it, and the
instant just before it orders every record correctly for a cursor.
"""

from __future__ import annotations

import email.utils
import re
import time
from datetime import UTC, datetime, timedelta

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)
#: The API's own form (UTC, milliseconds, `Z`), which nearly every timestamp syncd reads has:
#: a listing parses each record's updatedAt, so this form skips the general pattern and the
#: conversion to UTC (fromisoformat reads `Z` as UTC already).
_API_FORM = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:[0-5]\d\.\d{3}Z", re.ASCII)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class TimestampError(ValueError):
    """A string that is not an RFC 3339 instant."""

    def __init__(self, value: object, problem: str) -> None:
        self.value = value
        self.problem = problem
        super().__init__(f"{value!r} is not an RFC 3339 timestamp: {problem}")


def parse(value: str) -> datetime:
    """RFC 3339 -> aware datetime in UTC. Raises TimestampError."""
    if not isinstance(value, str):
        raise TimestampError(value, f"expected a string, got {type(value).__name__}")
    if _API_FORM.fullmatch(value):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass  # a day or hour out of range: the general path says which
    m = _RFC3339.fullmatch(value)
    if m is None:
        raise TimestampError(value, "expected YYYY-MM-DDTHH:MM:SS[.fraction] and Z or an offset")
    if m.group(6) != "60":
        # The C parser for the common forms (listings parse every record's updatedAt); the
        # regex above already refused what it accepts beyond RFC 3339.
        try:
            return datetime.fromisoformat(value).astimezone(UTC)
        except (ValueError, OverflowError):
            pass  # the slow path says precisely what is wrong, or handles what it cannot
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    micro = int((m.group(7) or "0")[:6].ljust(6, "0"))
    if second == 60:
        second, micro = 59, 999_000
    offset = 0
    if m.group(8) is None:
        off_h, off_m = int(m.group(10)), int(m.group(11))
        if off_h > 23 or off_m > 59:
            raise TimestampError(value, f"offset {m.group(9)}{m.group(10)}:{m.group(11)} is out of range")
        offset = (off_h * 60 + off_m) * (-1 if m.group(9) == "-" else 1)
    try:
        local = datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)
        return local - timedelta(minutes=offset)
    except (ValueError, OverflowError) as exc:
        raise TimestampError(value, str(exc)) from None


def to_epoch(value: str) -> float:
    """RFC 3339 -> epoch seconds. Raises TimestampError."""
    return (parse(value) - _EPOCH).total_seconds()


def to_ms(value: str) -> int:
    """RFC 3339 -> epoch milliseconds (truncated), the API's precision: exact integer
    comparison, no float rounding between two timestamps one millisecond apart."""
    delta = parse(value) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def try_epoch(value: object) -> float | None:
    """Epoch seconds, or None for anything that is not an RFC 3339 instant."""
    if not isinstance(value, str):
        return None
    try:
        return to_epoch(value)
    except TimestampError:
        return None


def format_epoch(ts: float | None = None) -> str:
    """Epoch seconds (default: now) -> the API's form: UTC, milliseconds, `Z`."""
    return _format(datetime.fromtimestamp(time.time() if ts is None else ts, UTC))


def format_ms(ms: int) -> str:
    """Epoch milliseconds -> the API's form: UTC, milliseconds, `Z`."""
    return _format(_EPOCH + timedelta(milliseconds=ms))


def _format(dt: datetime) -> str:
    # The year by hand: strftime's %Y does not pad years before 1000 on every platform
    # ("999-01-01..."), which would be no RFC 3339 timestamp at all.
    return f"{dt.year:04d}-" + dt.strftime("%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def normalize(value: str) -> str:
    """Any RFC 3339 timestamp -> the API's form (UTC, milliseconds, `Z`)."""
    return format_ms(to_ms(value))


def http_date_epoch(value: str | None) -> float | None:
    """An HTTP `Date` header -> epoch seconds, or None when absent or unreadable."""
    if not value:
        return None
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if dt.tzinfo is None:
        # RFC 9110 dates are always GMT; an obsolete form without a zone means GMT too.
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()
