"""The listing index on its own: ordering, ties, inclusive since, lag, deletion."""

from __future__ import annotations

import json

from syncd.sim.table import Table


def _body(rid: int | str, version: int, ms: int) -> bytes:
    return json.dumps({"id": rid, "version": version, "ms": ms}).encode()


def _ids(table: Table, **kwargs: object) -> list[object]:
    page = table.page(limit=1000, **kwargs)  # type: ignore[arg-type]
    return [json.loads(b)["id"] for b in page.bodies]


def test_orders_listed_by_updated_at_then_numeric_id() -> None:
    table = Table("orders", int_ids=True)
    table.bulk_load([(10, 1, 5, _body(10, 1, 5)), (9, 1, 5, _body(9, 1, 5)), (2, 1, 7, _body(2, 1, 7))])
    table.bulk_load([(100, 1, 5, _body(100, 1, 5))])
    assert _ids(table, since_ms=None, after=None) == [9, 10, 100, 2]


def test_string_ids_tie_break_and_inclusive_since() -> None:
    table = Table("customers", int_ids=False)
    rows = [("cus_b", 1, 5, _body("cus_b", 1, 5)), ("cus_a", 1, 5, _body("cus_a", 1, 5))]
    rows.append(("cus_c", 1, 4, _body("cus_c", 1, 4)))
    table.bulk_load(rows)
    assert _ids(table, since_ms=5, after=None) == ["cus_a", "cus_b"]
    assert _ids(table, since_ms=6, after=None) == []
    assert _ids(table, since_ms=None, after=(5, "cus_a")) == ["cus_b"]


def test_pending_change_hides_until_visible_and_keeps_old_version_listed() -> None:
    table = Table("orders", int_ids=True)
    table.bulk_load([(1, 1, 1000, _body(1, 1, 1000))])
    table.write(1, 2, 2000, _body(1, 2, 2000), visible_at=10.0)
    table.promote(5.0)
    listed = [json.loads(b) for b in table.page(since_ms=None, after=None, limit=10).bodies]
    assert listed == [{"id": 1, "version": 1, "ms": 1000}]
    assert json.loads(table.get(1) or b"")["version"] == 2
    table.promote(10.0)
    listed = [json.loads(b) for b in table.page(since_ms=None, after=None, limit=10).bodies]
    assert listed == [{"id": 1, "version": 2, "ms": 2000}]


def test_older_change_with_longer_lag_never_replaces_newer_visible_one() -> None:
    table = Table("orders", int_ids=True)
    table.write(1, 1, 1000, _body(1, 1, 1000), visible_at=9.0)
    table.write(1, 2, 1001, _body(1, 2, 1001), visible_at=2.0)
    table.promote(3.0)
    assert _ids(table, since_ms=None, after=None) == [1]
    table.promote(20.0)
    page = table.page(since_ms=None, after=None, limit=10)
    assert [json.loads(b)["version"] for b in page.bodies] == [2]
    assert table.visible_count == 1


def test_delete_removes_record_and_its_pending_changes() -> None:
    table = Table("customers", int_ids=False)
    table.bulk_load([("cus_a", 1, 5, _body("cus_a", 1, 5))])
    table.write("cus_a", 2, 6, _body("cus_a", 2, 6), visible_at=100.0)
    assert table.delete("cus_a")
    table.promote(1000.0)
    assert _ids(table, since_ms=None, after=None) == []
    assert table.get("cus_a") is None
    assert not table.delete("cus_a")


def test_page_has_more_and_limit() -> None:
    table = Table("orders", int_ids=True)
    table.bulk_load([(i, 1, 1000, _body(i, 1, 1000)) for i in range(1, 6)])
    first = table.page(since_ms=None, after=None, limit=2)
    assert first.has_more
    assert first.last == (1000, 2)
    rest = table.page(since_ms=None, after=first.last, limit=3)
    assert [json.loads(b)["id"] for b in rest.bodies] == [3, 4, 5]
    assert not rest.has_more
