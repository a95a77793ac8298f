import json
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.core.changes import (
    ALL_EVENTS,
    EVENT_RULES,
    Change,
    ChangeKind,
    ChangeSource,
    changed_fields,
    changed_for,
    derive_event,
    is_low,
    matches,
    new_change,
)

CREATED, UPDATED, DELETED, RESTORED = (
    ChangeKind.CREATED,
    ChangeKind.UPDATED,
    ChangeKind.DELETED,
    ChangeKind.RESTORED,
)


def order(status: str = "placed", **extra: Any) -> dict[str, Any]:
    return {"id": 12345, "status": status, "total": 59.99, "version": 1, "updatedAt": "t1", **extra}


def stock(quantity: Any, threshold: Any = 10, **extra: Any) -> dict[str, Any]:
    return {"id": "sku-1", "product": "Dog Food", "quantity": quantity, "threshold": threshold, **extra}


# --- the derivation table, row by row ----------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "kind", "event"),
    [
        ("orders", CREATED, "order.created"),
        ("orders", DELETED, "order.deleted"),
        ("orders", RESTORED, "order.restored"),
        ("customers", CREATED, "customer.registered"),
        ("customers", DELETED, "customer.deleted"),
        ("customers", RESTORED, "customer.restored"),
        ("inventory", CREATED, "inventory.created"),
        ("inventory", DELETED, "inventory.deleted"),
        ("inventory", RESTORED, "inventory.restored"),
    ],
)
def test_fixed_events_do_not_depend_on_the_data(resource: str, kind: ChangeKind, event: str) -> None:
    # Even a state that would otherwise be "shipped" or "low" is, first, created/deleted/restored.
    for previous, current in [
        (None, {}),
        (order("placed"), order("shipped")),
        (stock(20), stock(1)),
    ]:
        assert derive_event(resource, kind, previous, current) == event


@pytest.mark.parametrize("status", ["shipped", "completed", "cancelled"])
def test_order_status_changed_to_a_milestone(status: str) -> None:
    assert derive_event("orders", UPDATED, order("approved"), order(status)) == f"order.{status}"


@pytest.mark.parametrize(
    ("previous", "current"),
    [
        (order("placed"), order("approved")),  # a status, but not one with its own event
        (order("shipped"), order("shipped", total=1.0)),  # still shipped: something else changed
        (order("placed"), order("placed", total=1.0)),
        (order("placed"), {k: v for k, v in order().items() if k != "status"}),  # status gone
        (order("placed"), order(None)),  # type: ignore[arg-type]
        (order("placed"), {**order(), "status": ["shipped"]}),  # malformed: not a string
        (order("placed"), order("Shipped")),  # statuses are case-sensitive
    ],
)
def test_order_updated(previous: dict[str, Any], current: dict[str, Any]) -> None:
    assert derive_event("orders", UPDATED, previous, current) == "order.updated"


def test_order_with_unknown_previous_counts_its_status_as_changed() -> None:
    assert derive_event("orders", UPDATED, None, order("shipped")) == "order.shipped"
    assert derive_event("orders", UPDATED, {"id": 1}, order("cancelled")) == "order.cancelled"


def test_customer_updates_are_updates() -> None:
    assert derive_event("customers", UPDATED, {"email": "a"}, {"email": "b"}) == "customer.updated"
    assert derive_event("customers", UPDATED, None, {}) == "customer.updated"


@pytest.mark.parametrize(
    ("previous", "current", "event"),
    [
        (stock(20), stock(5), "inventory.low"),  # became low
        (stock(10), stock(9), "inventory.low"),  # just under
        (stock(5), stock(3), "inventory.updated"),  # was low already
        (stock(20), stock(10), "inventory.updated"),  # quantity == threshold is not low
        (stock(5), stock(20), "inventory.updated"),  # restocked
        (stock(20), stock(15), "inventory.updated"),
        (stock(20), stock(5, threshold=3), "inventory.updated"),
        (stock(5, threshold=3), stock(5, threshold=8), "inventory.low"),  # threshold raised
        (stock(2.5, threshold=3.0), stock(2.5, threshold=2.0), "inventory.updated"),
        (stock(20), stock(2.5, threshold=3.0), "inventory.low"),  # floats are numbers
        (stock(20), stock(0), "inventory.low"),
        (stock(20), stock(-1, threshold=0), "inventory.low"),
    ],
)
def test_inventory_low(previous: dict[str, Any], current: dict[str, Any], event: str) -> None:
    assert derive_event("inventory", UPDATED, previous, current) == event


@pytest.mark.parametrize(
    "previous",
    [
        None,  # no known previous state
        {"id": "sku-1"},  # quantity and threshold missing
        stock(None),
        stock("3"),  # a string is not a number
        stock(True, threshold=10),  # nor a boolean
        stock(3, threshold=None),
        stock(3, threshold="10"),
        stock(float("nan")),
        stock(float("-inf")),
        stock([1]),
        stock({"n": 1}),
    ],
)
def test_previous_not_known_to_be_low_lets_low_through(previous: dict[str, Any] | None) -> None:
    assert derive_event("inventory", UPDATED, previous, stock(1)) == "inventory.low"


@pytest.mark.parametrize(
    "current",
    [
        {"id": "sku-1"},
        stock(None),
        stock("1"),
        stock(False, threshold=10),
        stock(1, threshold=None),
        stock(1, threshold=True),
        stock(float("nan")),
        stock(float("-inf"), threshold=float("inf")),
        stock(1, threshold=[10]),
    ],
)
def test_a_malformed_current_state_is_never_low_and_never_raises(current: dict[str, Any]) -> None:
    assert derive_event("inventory", UPDATED, stock(20), current) == "inventory.updated"
    assert derive_event("inventory", UPDATED, None, current) == "inventory.updated"


def test_is_low_is_tri_state() -> None:
    assert is_low(stock(1)) is True
    assert is_low(stock(10)) is False
    assert is_low(stock("1")) is None
    assert is_low(None) is None


@given(
    previous=st.one_of(
        st.none(), st.dictionaries(st.sampled_from(["quantity", "threshold", "x"]), st.from_type(object))
    ),
    current=st.dictionaries(st.sampled_from(["quantity", "threshold", "x", "status"]), st.from_type(object)),
    resource=st.sampled_from(sorted(EVENT_RULES)),
    kind=st.sampled_from(list(ChangeKind)),
)
def test_derivation_never_raises_on_any_values(
    previous: dict[str, Any] | None, current: dict[str, Any], resource: str, kind: ChangeKind
) -> None:
    assert derive_event(resource, kind, previous, current) in ALL_EVENTS


def test_every_event_of_the_table_is_listed() -> None:
    fixed = {e for rule in EVENT_RULES.values() for e in (rule.created, rule.deleted, rule.restored)}
    derived = {
        "order.updated",
        "order.shipped",
        "order.completed",
        "order.cancelled",
        "customer.updated",
        "inventory.updated",
        "inventory.low",
    }
    assert fixed | derived == ALL_EVENTS


def test_unknown_resource_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="pets"):
        derive_event("pets", CREATED, None, {})


# --- changed fields ----------------------------------------------------------------------


def test_changed_fields_lists_what_differs() -> None:
    previous = order("approved", note="fragile")
    current = order("shipped", tracking="1Z", version=2, updatedAt="t2")
    assert changed_fields(previous, current) == {
        "status": {"from": "approved", "to": "shipped"},
        "tracking": {"from": None, "to": "1Z"},
        "note": {"from": "fragile", "to": None},
    }


def test_changed_fields_ignores_version_and_updated_at() -> None:
    assert changed_fields(order(), order(version=7, updatedAt="later")) == {}


def test_absent_and_null_are_the_same() -> None:
    assert changed_fields({"a": None}, {}) == {}
    assert changed_fields({}, {"a": None}) == {}


def test_changed_fields_compares_as_json() -> None:
    assert changed_fields({"n": 1}, {"n": 1.0}) == {}  # one JSON number
    assert changed_fields({"n": 1}, {"n": True}) == {"n": {"from": 1, "to": True}}
    assert changed_fields({"n": 0}, {"n": False}) == {"n": {"from": 0, "to": False}}
    assert changed_fields({"n": "1"}, {"n": 1}) == {"n": {"from": "1", "to": 1}}
    items = [{"product": "Dog Food", "quantity": 2}]
    assert changed_fields({"items": items}, {"items": [{"quantity": 2, "product": "Dog Food"}]}) == {}
    assert changed_fields({"items": items}, {"items": [{"product": "Dog Food", "quantity": True}]}) != {}
    assert changed_fields({"items": items}, {"items": [*items, *items]}) != {}
    nan = float("nan")
    assert changed_fields({"x": nan}, {"x": nan}) == {}
    # Nested values past what orjson encodes are still compared.
    assert changed_fields({"x": [2**70]}, {"x": [2**70]}) == {}
    assert changed_fields({"x": {"n": 2**70}}, {"x": {"n": 2**70 + 1}}) != {}


def test_changed_fields_without_previous_is_none() -> None:
    assert changed_fields(None, order()) is None


def test_changed_by_kind() -> None:
    assert changed_for(CREATED, None, order()) is None
    assert changed_for(DELETED, order(), order()) is None
    assert changed_for(UPDATED, order(), order("shipped")) == {"status": {"from": "placed", "to": "shipped"}}
    # Restored: what differs from the last known state, possibly nothing.
    assert changed_for(RESTORED, order(), order()) == {}
    assert changed_for(RESTORED, order(), order("cancelled")) == {
        "status": {"from": "placed", "to": "cancelled"}
    }


@given(
    st.dictionaries(st.text(max_size=3), st.one_of(st.none(), st.integers(), st.text(max_size=3))),
    st.dictionaries(st.text(max_size=3), st.one_of(st.none(), st.integers(), st.text(max_size=3))),
)
def test_applying_changed_turns_previous_into_current(
    previous: dict[str, Any], current: dict[str, Any]
) -> None:
    changed = changed_fields(previous, current)
    assert changed is not None
    rebuilt = dict(previous)
    for key, diff in changed.items():
        assert rebuilt.get(key) == diff["from"]
        rebuilt[key] = diff["to"]
    for key in set(rebuilt) | set(current):
        if key not in ("version", "updatedAt"):
            assert rebuilt.get(key) == current.get(key)


# --- patterns ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "patterns", "expected"),
    [
        ("order.shipped", ["*"], True),
        ("order.shipped", ["order.*"], True),
        ("order.shipped", ["customer.*", "order.shipped"], True),
        ("customer.deleted", ["order.*", "customer.deleted"], True),
        ("customer.updated", ["order.*", "customer.deleted"], False),
        ("inventory.deleted", ["*.deleted"], True),
        ("order.shipped", [], False),
        ("order.shipped", ["ORDER.*"], False),
        ("order.cancelled", ["order.c*"], True),
    ],
)
def test_matches(event: str, patterns: list[str], expected: bool) -> None:
    assert matches(event, patterns) is expected


# --- the record --------------------------------------------------------------------------


def make(**overrides: Any) -> Change:
    fields: dict[str, Any] = {
        "mirror": "m-1",
        "resource": "orders",
        "record_id": 12345,
        "kind": UPDATED,
        "source": ChangeSource.POLL,
        "data": order("shipped", version=4),
        "version": 4,
        "previous": order("approved", version=3),
        "previous_version": 3,
        "at": "2026-12-01T10:00:00.123Z",
    }
    fields.update(overrides)
    return new_change(**fields).with_seq(1207)


def test_json_shape_and_key_order() -> None:
    change = make()
    body = change.to_json()
    assert list(json.loads(body)) == [
        "seq",
        "mirror",
        "event",
        "kind",
        "resource",
        "record_id",
        "version",
        "previous_version",
        "source",
        "changed",
        "data",
        "at",
        "initial",
    ]
    assert json.loads(body) == {
        "seq": 1207,
        "mirror": "m-1",
        "event": "order.shipped",
        "kind": "updated",
        "resource": "orders",
        "record_id": 12345,
        "version": 4,
        "previous_version": 3,
        "source": "poll",
        "changed": {"status": {"from": "approved", "to": "shipped"}},
        "data": order("shipped", version=4),
        "at": "2026-12-01T10:00:00.123Z",
        "initial": False,
    }
    assert change.webhook_id == "m-1-1207"


def test_created_and_deleted_carry_no_changed() -> None:
    created = make(kind=CREATED, previous=None, previous_version=None, version=1)
    assert created.event == "order.created"
    assert created.changed is None
    assert json.loads(created.to_json())["changed"] is None
    last = order("shipped", version=4)
    deleted = make(kind=DELETED, source=ChangeSource.RELIST, data=last, previous=last, previous_version=4)
    assert (deleted.event, deleted.changed, deleted.version, deleted.previous_version) == (
        "order.deleted",
        None,
        4,
        4,
    )


def test_string_ids_stay_strings() -> None:
    change = make(
        resource="customers", record_id="cus_1", data={"id": "cus_1", "email": "a@b"}, previous=None
    )
    assert json.loads(change.to_json())["record_id"] == "cus_1"


def test_round_trips() -> None:
    change = make(initial=True)
    assert Change.from_json(change.to_json()) == change
    assert Change.from_row(change.to_row()) == change


def test_values_orjson_refuses_still_serialize() -> None:
    # Integers past 64 bits and lone surrogates can come from an API: never a crash.
    data = {"id": 2**70, "note": "\ud800", "version": 1}
    change = make(record_id=2**70, data=data, previous=None, kind=CREATED)
    body = change.to_json()
    assert json.loads(body)["data"]["id"] == 2**70
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(data)
    back = Change.from_row(change.to_row())
    assert back.data["id"] == 2**70
    assert back.record_id == str(2**70)  # SQLite holds 64 bits: the id keeps its digits as text


def test_from_json_rejects_what_is_not_a_change() -> None:
    with pytest.raises(ValueError, match="not a change"):
        Change.from_json(b"[]")
    with pytest.raises(ValueError, match="not a change"):
        Change.from_json(b'{"seq": 1}')
    with pytest.raises(ValueError, match="exploded"):
        Change.from_dict({**make().to_dict(), "kind": "exploded"})
