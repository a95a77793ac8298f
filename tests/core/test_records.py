import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.contract import EVENTS, TEST_EVENT
from syncd.core.records import (
    Change,
    Envelope,
    ThinRef,
    change_from_envelope,
    parse_envelope,
    parse_record,
    resource_for_event,
)
from syncd.errors import RecordError

ORDER = {
    "id": 12345,
    "customer": "john@example.com",
    "status": "placed",
    "total": 59.99,
    "currency": "USD",
    "items": [{"product": "Dog Food", "quantity": 2, "unitPrice": 29.995}],
    "createdAt": "2024-01-15T10:30:00.000Z",
    "updatedAt": "2024-01-15T10:30:00.000Z",
    "version": 1,
}
CUSTOMER = {
    "id": "cus_8f3k2",
    "email": "john@example.com",
    "name": "John Doe",
    "createdAt": "2024-01-15T10:30:00.000Z",
    "updatedAt": "2024-01-15T10:31:00.000Z",
    "version": 3,
}


def body(obj: Any) -> bytes:
    return json.dumps(obj).encode()


# -- parse_record ----------------------------------------------------------------------------


def test_parse_record_keeps_every_field_and_reads_the_ordering_keys() -> None:
    change = parse_record("orders", ORDER, "poll")
    assert change == Change("orders", 12345, 1, "2024-01-15T10:30:00.000Z", ORDER, "poll")
    assert change.event_id is None
    assert change.event_type is None


def test_parse_record_keeps_unknown_fields() -> None:
    record = {**CUSTOMER, "loyaltyTier": "gold", "tags": ["a"]}
    change = parse_record("customers", record, "fetch")
    assert change.data["loyaltyTier"] == "gold"
    assert change.data["tags"] == ["a"]
    assert change.id == "cus_8f3k2"
    assert change.source == "fetch"


@pytest.mark.parametrize(
    "ts",
    ["2024-01-15T10:30:00Z", "2024-01-15T10:30:00.123Z", "2024-01-15T10:30:00.123456+02:00"],
)
def test_parse_record_accepts_rfc3339_timestamps(ts: str) -> None:
    assert parse_record("orders", {**ORDER, "updatedAt": ts}, "poll").updated_at == ts


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ([ORDER], "record must be a JSON object, got list"),
        ({**ORDER, "id": None}, "id must be an integer or a string, got None"),
        ({**ORDER, "id": True}, "id must be an integer or a string, got True"),
        ({**ORDER, "id": 1.5}, "id must be an integer or a string, got 1.5"),
        ({**ORDER, "id": ""}, "id must not be empty"),
        ({**ORDER, "version": 0}, "record 12345: version must be an integer >= 1, got 0"),
        ({**ORDER, "version": "2"}, "record 12345: version must be an integer >= 1, got '2'"),
        ({**ORDER, "version": True}, "record 12345: version must be an integer >= 1, got True"),
        ({k: v for k, v in ORDER.items() if k != "version"}, "version must be an integer >= 1, got None"),
        ({**ORDER, "updatedAt": "yesterday"}, "updatedAt must be an RFC 3339 timestamp, got 'yesterday'"),
        ({**ORDER, "updatedAt": 1705314600}, "updatedAt must be an RFC 3339 timestamp, got 1705314600"),
    ],
)
def test_parse_record_rejects_what_the_reconciler_cannot_order(record: Any, reason: str) -> None:
    with pytest.raises(RecordError) as info:
        parse_record("orders", record, "poll")
    assert reason in info.value.reason
    assert info.value.resource == "orders"
    assert str(info.value).startswith("orders: ")


_INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_UNICODE_TEXT = st.text(st.characters(exclude_categories=("Cs",)), min_size=1)


@given(version=st.integers(min_value=1, max_value=2**63 - 1), rid=_INT64 | _UNICODE_TEXT)
def test_parse_record_round_trips_any_valid_id_and_version(version: int, rid: int | str) -> None:
    change = parse_record("inventory", {**ORDER, "id": rid, "version": version}, "webhook")
    assert (change.id, change.version) == (rid, version)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("id", 2**63, "id 9223372036854775808 is outside the 64-bit integer range"),
        ("id", -(2**63) - 1, "is outside the 64-bit integer range"),
        ("id", "a\ud800", "is not valid Unicode (lone surrogate)"),
        ("id", 1e400, "id must be an integer or a string, got inf"),
        ("version", 2**63, "version 9223372036854775808 is outside the 64-bit integer range"),
        ("version", 2**200, "is outside the 64-bit integer range"),
        ("version", float("nan"), "version must be an integer >= 1, got nan"),
    ],
)
def test_ids_and_versions_sqlite_cannot_hold_are_record_errors(
    field: str, value: object, reason: str
) -> None:
    with pytest.raises(RecordError) as info:
        parse_record("orders", {**ORDER, field: value}, "poll")
    assert reason in info.value.reason


def test_ids_and_versions_at_the_64_bit_bound_are_records() -> None:
    change = parse_record("orders", {**ORDER, "id": 2**63 - 1, "version": 2**63 - 1}, "poll")
    assert (change.id, change.version) == (2**63 - 1, 2**63 - 1)
    assert parse_record("orders", {**ORDER, "id": -(2**63)}, "poll").id == -(2**63)


# -- parse_envelope --------------------------------------------------------------------------


def test_parse_envelope_reads_the_contract_fields() -> None:
    env = parse_envelope(
        body(
            {
                "eventId": "evt_1",
                "event": "order.created",
                "timestamp": "2024-01-15T10:30:00.123Z",
                "data": ORDER,
            }
        )
    )
    assert env == Envelope("evt_1", "order.created", "2024-01-15T10:30:00.123Z", ORDER)


@pytest.mark.parametrize(
    "obj",
    [
        {"id": "evt_1", "event": "order.created", "data": {}},
        {"eventId": "evt_1", "eventType": "order.created", "data": {}},
        {"eventId": "evt_1", "type": "order.created", "data": {}},
        {"id": "evt_1", "type": "order.created", "data": {}},
    ],
)
def test_parse_envelope_accepts_aliases(obj: dict[str, Any]) -> None:
    env = parse_envelope(body(obj))
    assert (env.event_id, env.event_type, env.timestamp) == ("evt_1", "order.created", None)


def test_parse_envelope_prefers_event_id_over_id_alias() -> None:
    env = parse_envelope(body({"eventId": "evt_a", "id": "evt_b", "event": "e", "eventType": "f"}))
    assert (env.event_id, env.event_type) == ("evt_a", "e")


def test_parse_envelope_ignores_a_timestamp_that_is_not_a_string() -> None:
    assert parse_envelope(body({"eventId": "e", "event": "x", "timestamp": 17})).timestamp is None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "body is not JSON: JSONDecodeError"),
        (b"\xff\xfe\x00", "body is not JSON"),
        (b"", "body is not JSON"),
        (b"[1, 2]", "envelope must be a JSON object, got list"),
        (b'"evt"', "envelope must be a JSON object, got str"),
        (b'{"event": "order.created"}', "envelope has no eventId"),
        (b'{"eventId": 5, "event": "order.created"}', "envelope has no eventId"),
        (b'{"eventId": "", "event": "order.created"}', "envelope has no eventId"),
        (b'{"eventId": "evt_9"}', "event evt_9: envelope has no event type"),
        (b'{"eventId": "evt_9", "event": ""}', "event evt_9: envelope has no event type"),
        (b"[" * 100_000 + b"]" * 100_000, "body is nested deeper than the JSON parser's limit"),
        (
            b'{"eventId": "e", "event": "order.created", "data": ' + b"[" * 40 + b"]" * 40 + b"}",
            "body is nested deeper than 32 levels",
        ),
    ],
)
def test_parse_envelope_rejects_bad_bodies_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(RecordError) as info:
        parse_envelope(raw)
    assert info.value.reason.startswith(reason)


@given(st.binary(max_size=200))
def test_parse_envelope_never_raises_anything_but_record_error(raw: bytes) -> None:
    env: Envelope | RecordError
    try:
        env = parse_envelope(raw)
    except RecordError as exc:
        env = exc
    if isinstance(env, RecordError):
        assert env.reason
    else:
        assert env.event_id
        assert env.event_type


# -- change_from_envelope --------------------------------------------------------------------


def test_full_snapshot_becomes_a_webhook_change_with_event_ids() -> None:
    env = Envelope("evt_7", "order.shipped", None, ORDER)
    change = change_from_envelope(env)
    assert change == Change(
        "orders", 12345, 1, ORDER["updatedAt"], ORDER, "webhook", event_id="evt_7", event_type="order.shipped"
    )


@pytest.mark.parametrize(
    ("event", "resource"),
    [
        ("order.created", "orders"),
        ("order.updated", "orders"),
        ("order.shipped", "orders"),
        ("order.completed", "orders"),
        ("order.cancelled", "orders"),
        ("inventory.low", "inventory"),
        ("inventory.updated", "inventory"),
        ("customer.registered", "customers"),
    ],
)
def test_every_known_event_maps_to_its_resource(event: str, resource: str) -> None:
    assert event in EVENTS
    assert resource_for_event(event) == resource
    change = change_from_envelope(Envelope("evt_1", event, None, CUSTOMER))
    assert isinstance(change, Change)
    assert change.resource == resource


def test_thin_event_becomes_a_reference_to_fetch() -> None:
    ref = change_from_envelope(Envelope("evt_2", "customer.registered", None, {"id": "cus_1"}))
    assert ref == ThinRef("customers", "cus_1", "evt_2", "customer.registered")


def test_thin_event_with_a_bad_id_is_a_record_error() -> None:
    with pytest.raises(RecordError, match="id must be an integer or a string"):
        change_from_envelope(Envelope("evt_2", "order.created", None, {"id": [1]}))


@pytest.mark.parametrize("event", [TEST_EVENT, "order.refunded", "payment.created", "order"])
def test_test_and_unknown_events_mirror_nothing(event: str) -> None:
    assert resource_for_event(event) is None
    # Even a record-shaped payload is not applied for a type syncd does not know.
    assert change_from_envelope(Envelope("evt_3", event, None, ORDER)) is None
    assert change_from_envelope(Envelope("evt_3", event, None, None)) is None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (None, "event evt_4: data must be a JSON object"),
        ([ORDER], "event evt_4: data must be a JSON object"),
        ({}, "id must be an integer or a string, got None"),
        ({**ORDER, "version": -1}, "record 12345: version must be an integer >= 1"),
        ({"id": 12345, "status": "placed"}, "record 12345: version must be an integer >= 1"),
    ],
)
def test_known_event_with_invalid_data_is_a_record_error(data: Any, reason: str) -> None:
    with pytest.raises(RecordError) as info:
        change_from_envelope(Envelope("evt_4", "order.updated", None, data))
    assert reason in info.value.reason
    assert info.value.resource == "orders"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-32"])
def test_parse_envelope_reads_what_the_standard_parser_reads(encoding: str) -> None:
    # orjson parses UTF-8 only; the standard parser also detects UTF-16 and UTF-32.
    raw = json.dumps({"eventId": "evt_é", "event": "order.created", "data": {"n": 2**70}}).encode(encoding)
    env = parse_envelope(raw)
    assert (env.event_id, env.data) == ("evt_é", {"n": 2**70})
    assert type(env.data["n"]) is int
