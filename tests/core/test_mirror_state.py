"""A previous state read back from a mirror row (`state_from_mirror`): the store's
conversions undone where the new state shows the type, and nothing invented where it
cannot tell."""

from __future__ import annotations

from typing import Any

import pytest

from syncd.core.mirror_state import state_from_mirror
from syncd.core.values import to_stored_value

BIG = 2**70


def stored(record: dict[str, Any]) -> dict[str, Any]:
    return {k: to_stored_value(v) for k, v in record.items() if v is not None}


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (True, False),
        (False, True),
        (BIG, BIG + 1),
        (-BIG, 5),
        (3, BIG),
        ({"a": [1, 2]}, {"a": []}),
        ([1, "x"], [2]),
        ("text", "other"),
        (1.5, 2.5),
    ],
)
def test_a_changed_value_reads_back_as_it_was(before: Any, after: Any) -> None:
    previous = state_from_mirror(stored({"id": 1, "v": before}), {"id": 1, "v": after})
    assert previous == {"id": 1, "v": before}
    assert type(previous["v"]) is type(before)


def test_an_unchanged_value_is_the_new_one_exactly() -> None:
    record = {"id": 1, "flag": True, "big": BIG, "items": [{"n": 1}], "name": "x"}
    assert state_from_mirror(stored(record), record) == record


def test_what_the_new_state_cannot_explain_stays_as_stored() -> None:
    # An integer column under a new string value, digits under a string, JSON-looking text
    # that is not canonical: nothing is guessed.
    content = {"id": 1, "n": 1, "code": "007", "note": '{"a":1, "b":2}'}
    previous = state_from_mirror(content, {"id": 1, "n": "one", "code": "8", "note": "plain"})
    assert previous == content
    # Without a new state (a tombstone's last known data) the row's values are all there is.
    assert state_from_mirror({"id": 1, "flag": 1}, None) == {"id": 1, "flag": 1}
