"""The fast preload encoder writes exactly what the general JSON encoder writes."""

from __future__ import annotations

import json
import random

from hypothesis import given
from hypothesis import strategies as st

from syncd.sim import catalog
from syncd.sim.clock import format_ms, parse_rfc3339_ms


@given(
    seed=st.integers(0, 2**32),
    oid=st.integers(1, 2**40 - 1),
    status=st.sampled_from(catalog.ORDER_STATUSES),
    created=st.integers(0, 4_000_000_000_000),
    age=st.integers(0, 10**10),
    version=st.integers(1, 10),
)
def test_order_bytes_equals_json_encoding(
    seed: int, oid: int, status: str, created: int, age: int, version: int
) -> None:
    items_json, total = catalog.random_items_json(random.Random(seed))
    items = json.loads(f"[{items_json}]")
    email = f"mary.chen{seed}@example.com"
    fast = catalog.order_bytes(oid, email, status, items_json, total, created, created + age, version)
    slow = catalog.encode(catalog.order(oid, email, status, items, total, created, created + age, version))
    assert fast == slow
    assert round(sum(i["quantity"] * i["unitPrice"] for i in items), 2) == total


@given(st.integers(0, 253_402_300_799_999))
def test_timestamps_round_trip(ms: int) -> None:
    text = format_ms(ms)
    assert len(text) == 24
    assert text.endswith("Z")
    assert parse_rfc3339_ms(text) == ms


def test_since_accepts_offsets_and_rounds_sub_millisecond_up() -> None:
    assert parse_rfc3339_ms("2024-01-15T10:30:00.123Z") == 1705314600123
    assert parse_rfc3339_ms("2024-01-15T11:30:00.123+01:00") == 1705314600123
    assert parse_rfc3339_ms("2024-01-15T10:30:00.123000Z") == 1705314600123
    assert parse_rfc3339_ms("2024-01-15T10:30:00.123001Z") == 1705314600124
