"""syncd.timefmt: RFC 3339 parsed to instants, in every form the RFC allows, and nothing else."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd import timefmt


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("2024-01-15T10:30:00.123Z", "2024-01-15T10:30:00.123Z"),
        ("2024-01-15t10:30:00z", "2024-01-15T10:30:00.000Z"),
        ("2024-01-15T10:00:00+05:30", "2024-01-15T04:30:00.000Z"),
        ("2024-01-15T10:00:00-00:00", "2024-01-15T10:00:00.000Z"),
        ("2024-01-15T10:30:00.123456789Z", "2024-01-15T10:30:00.123Z"),
        ("2024-01-15T10:30:00.1Z", "2024-01-15T10:30:00.100Z"),
        ("2016-12-31T23:59:60Z", "2016-12-31T23:59:59.999Z"),
        ("2017-01-01T05:29:60.5+05:30", "2016-12-31T23:59:59.999Z"),
    ],
)
def test_every_rfc3339_form_parses_to_its_instant(text: str, normalized: str) -> None:
    assert timefmt.normalize(text) == normalized
    assert timefmt.try_epoch(text) == timefmt.to_epoch(text)


@pytest.mark.parametrize(
    "text",
    [
        "2024-13-45T10:00:00Z",
        "2024-02-30T00:00:00Z",
        "2024-01-15T24:00:00Z",
        "2024-01-15T10:60:00Z",
        "2024-01-15T10:00:61Z",
        "2024-01-15T10:00:00+24:00",
        "2024-01-15T10:00:00",
        "2024-01-15 10:00:00Z",
        "2024-01-15T10:30Z",
        "2024-W03-1T10:00:00Z",
        "20240115T103000Z",
        "2024-01-15T10:30:00.Z",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        "\uff12\uff10\uff12\uff14-01-15T10:30:00Z",
        "",
    ],
)
def test_what_is_no_instant_is_refused(text: str) -> None:
    with pytest.raises(timefmt.TimestampError, match="not an RFC 3339 timestamp"):
        timefmt.parse(text)
    assert timefmt.try_epoch(text) is None


def test_offsets_order_as_instants() -> None:
    assert timefmt.to_ms("2024-01-15T10:00:00+05:30") < timefmt.to_ms("2024-01-15T09:00:00Z")
    assert "2024-01-15T10:00:00+05:30" > "2024-01-15T09:00:00Z"  # what string order would say


def test_http_dates() -> None:
    assert timefmt.http_date_epoch("Mon, 15 Jan 2024 10:30:00 GMT") == 1705314600.0
    assert timefmt.http_date_epoch(None) is None
    assert timefmt.http_date_epoch("soon") is None


@given(
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(9000, 1, 1), timezones=st.just(UTC)),
    st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59),
    st.integers(min_value=0, max_value=9),
)
def test_any_offset_and_fraction_round_trips(instant: datetime, offset: int, digits: int) -> None:
    local = instant.astimezone(timezone(timedelta(minutes=offset)))
    sign = "-" if offset < 0 else "+"
    fraction = f"{local.microsecond:06d}000"[:digits]
    text = (
        local.strftime("%Y-%m-%dT%H:%M:%S")
        + (f".{fraction}" if digits else "")
        + f"{sign}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"
    )
    kept = 10 ** (6 - min(digits, 6))
    expected = instant.replace(microsecond=instant.microsecond // kept * kept)
    assert timefmt.parse(text) == expected
    assert timefmt.normalize(timefmt.normalize(text)) == timefmt.normalize(text)
    assert timefmt.format_ms(timefmt.to_ms(text)) == timefmt.normalize(text)


@given(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)))
def test_the_api_form_parses_to_the_same_instant_as_any_other_spelling(instant: datetime) -> None:
    # The API's own form takes a shorter path; its instant must be what the general path
    # gives for the same instant spelled with an offset.
    millis = instant.replace(microsecond=instant.microsecond // 1000 * 1000)
    api_form = (
        f"{millis.year:04d}-" + millis.strftime("%m-%dT%H:%M:%S.") + f"{millis.microsecond // 1000:03d}Z"
    )
    assert timefmt.parse(api_form) == millis
    assert timefmt.parse(api_form).tzinfo is UTC
    assert timefmt.to_ms(api_form) == timefmt.to_ms(api_form.replace("Z", "+00:00"))
    assert timefmt.format_ms(timefmt.to_ms(api_form)) == api_form


@pytest.mark.parametrize(
    "text",
    [
        "2024-02-30T00:00:00.000Z",
        "2024-01-15T24:00:00.000Z",
        "0000-01-01T00:00:00.000Z",
        "2024-00-15T10:00:00.000Z",
    ],
)
def test_the_api_form_with_a_field_out_of_range_is_refused(text: str) -> None:
    with pytest.raises(timefmt.TimestampError, match="not an RFC 3339 timestamp"):
        timefmt.parse(text)


def test_a_leap_second_in_the_api_form_is_clamped() -> None:
    assert timefmt.normalize("2016-12-31T23:59:60.250Z") == "2016-12-31T23:59:59.999Z"
