"""syncd.jsonparse.loads gives exactly what the standard parser gives, for the API's pages and
webhook bodies alike: integers past 64 bits, NaN, lone surrogates, duplicate keys."""

from __future__ import annotations

import json

import pytest

from syncd.jsonparse import loads


def test_loads_is_the_standard_parse() -> None:
    bodies = [
        b'{"id": 123456789012345678901234567890, "neg": -9223372036854775809}',
        b'{"a": NaN, "b": Infinity}',
        b'{"a": "\\ud800", "b": [1.5, -0.0, 1e400]}',
        b'{"a": 1, "a": 2, "u": "\\u00e9\xc3\xa9"}',
        b'{"ok": [1, 2, {"x": null, "t": true}], "f": 0.1}',
    ]
    for body in bodies:
        expected = json.loads(body.decode("utf-8"))
        assert repr(loads(body)) == repr(expected), body
    with pytest.raises(UnicodeDecodeError):
        loads(b'{"a": "\xff"}')
