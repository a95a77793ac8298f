"""Record values as the store holds them, and what the reconciler knows of a stored record.

Pure: the store writes these values and the reconciler compares with them, so both must
agree on one conversion, and it lives here, below both.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson


class StoredState(NamedTuple):
    """What the reconciler needs to know of a stored record. `content` (field -> column value,
    NULLs dropped) is loaded only when a decision needs it (same version seen again).
    `authority` is the highest authority that has shown this state; None means that of
    `source`. A named tuple: one is built per record looked up, in the apply hot path."""

    version: int
    deleted: bool
    source: str
    content: Mapping[str, Any] | None = None
    authority: int | None = None


#: Values SQLite stores as they are; checked by exact type first because this runs for every
#: field of every record applied. Floats are not among them: SQLite turns NaN into NULL.
PLAIN_TYPES = frozenset({str, type(None)})
#: What the store binds as it is when it writes rows: PLAIN_TYPES and int. Integers past 64
#: bits fail to bind (OverflowError) and only then are converted, like lone surrogates: a
#: listing binds two integers per order (id, version), and the conversion was a call each.
BOUND_AS_IS = frozenset({str, type(None), int})
_INT_MIN, _INT_MAX = -(2**63), 2**63
_JSON = json.JSONEncoder(separators=(",", ":"), sort_keys=True, ensure_ascii=False)
_JSON_ASCII = json.JSONEncoder(separators=(",", ":"), sort_keys=True)


def to_json_text(value: Any) -> str:
    """Canonical JSON text of a nested value: sorted keys, compact, UTF-8. orjson is several
    times faster than the json module for the small values records nest, and this runs for
    every nested field of every record applied or compared. Values orjson refuses (integers
    past 64 bits, lone surrogates) take the json module's way; either way one value always
    gets the same text, which is what duplicate detection compares."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        text = _JSON.encode(value)
    try:
        text.encode()
    except UnicodeEncodeError:
        # A lone surrogate: SQLite's UTF-8 cannot hold it, its JSON escape can.
        return _JSON_ASCII.encode(value)
    return text


def escape_text(value: str) -> str:
    """A string SQLite's UTF-8 cannot hold (a lone surrogate) is stored as its JSON string
    literal, quotes included."""
    return json.dumps(value)


def storable_text(value: str) -> str:
    """`value`, or its escape when it holds a lone surrogate. Only for strings that failed
    or may fail to bind: the apply path binds strings as they are and comes here on error."""
    if value.isascii():
        return value
    try:
        value.encode()
    except UnicodeEncodeError:
        return escape_text(value)
    return value


def to_stored_value(value: Any) -> Any:
    """`to_column_value`, strings included: what the store holds for any top-level value."""
    return storable_text(value) if type(value) is str else to_column_value(value)


def to_column_value(value: Any) -> Any:
    """Top-level record value -> what SQLite stores. Nested values become JSON text."""
    kind = type(value)
    if kind is int:
        # Beyond 64 bits SQLite cannot hold an integer; keep its digits as text.
        return value if _INT_MIN <= value < _INT_MAX else str(value)
    if kind is float:
        return value if value == value else "NaN"
    if kind in PLAIN_TYPES:
        return value
    if kind is list or kind is dict:
        return to_json_text(value)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return int(value) if _INT_MIN <= value < _INT_MAX else str(value)
    if isinstance(value, float):
        return float(value) if value == value else "NaN"
    if isinstance(value, str):
        return value
    return to_json_text(value)
