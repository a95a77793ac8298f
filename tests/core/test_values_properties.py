"""The duplicate check's shortcut (`_matches`) agrees with comparing `content_of`, for any
record and any stored copy: it exists for speed only, never to decide differently."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from syncd.core.reconcile import _matches, content_of
from syncd.core.records import Change

#: Text SQLite cannot hold as it is (lone surrogates) as well as ordinary text.
texts = st.text(st.characters(codec=None), max_size=8) | st.sampled_from(["\ud800", "a\udfffb", '"\\ud800"'])
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | texts
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)
records = st.dictionaries(st.sampled_from(["id", "status", "total", "items", "note", "Note", "x"]), values)


def change(data: dict[str, Any]) -> Change:
    return Change("orders", 1, 1, "2024-01-15T10:00:00.000Z", data, "poll")


@st.composite
def record_and_stored(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    data = draw(records)
    kind = draw(st.sampled_from(["same", "changed", "other"]))
    if kind == "same":
        stored = content_of(change(data))
    elif kind == "changed":
        stored = dict(content_of(change(data)))
        key = draw(st.sampled_from(["status", "note", "extra"]))
        if draw(st.booleans()) and key in stored:
            del stored[key]
        else:
            stored[key] = draw(scalars.filter(lambda v: v is not None))
    else:
        stored = content_of(change(draw(records)))
    return data, stored


@given(record_and_stored())
def test_matches_agrees_with_comparing_content_of(case: tuple[dict[str, Any], dict[str, Any]]) -> None:
    data, stored = case
    assert _matches(data, stored) == (content_of(change(data)) == stored)
