"""A record's previous state read back from the mirror's row, for a change whose record has
no earlier change in the log: the column values decoded, with the store's conversions
(booleans as 0/1, big integers as digits, nested values as JSON text) undone where the new
state shows what they were. Lossy where it cannot tell; the log's own JSON is exact.

Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from syncd.core.changes import load_json
from syncd.core.values import to_json_text, to_stored_value


def _nested_from_text(text: str) -> Any:
    """A nested value the store kept as JSON text, or `text` itself when it is not one. The
    store writes nested values as canonical JSON (`to_json_text`); only text that reads back
    as an array or object and writes out to the very same text is taken for one, so a string
    field that merely looks like JSON stays a string."""
    if not text or text[0] not in "[{":
        return text
    try:
        value = load_json(text)
    except ValueError:
        return text
    if isinstance(value, list | dict) and to_json_text(value) == text:
        return value
    return text


def state_from_mirror(content: Mapping[str, Any], current: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A record's state as the mirror's row holds it (`content`: field -> column value,
    NULLs dropped), for a change whose record has no earlier change in the log (mirrored
    before the log, by an initial sync it leaves out, or pruned).

    A field whose stored value is what `current`'s value would be stored as counts as that
    value, so a conversion the store makes (a boolean kept as 0/1, a big integer as digits)
    is never reported as a change. A value that did change is read back in the type the new
    one has where the store's conversion can be undone (0/1 under a boolean, digits under
    an integer), so a flag turned off shows `from: true`, not `from: 1`; other nested values
    are read back from their JSON."""
    out: dict[str, Any] = {}
    for key, stored in content.items():
        if current is not None and key in current:
            now = current[key]
            if to_stored_value(now) == stored:
                out[key] = now
                continue
            if type(now) is bool and type(stored) is int and stored in (0, 1):
                out[key] = bool(stored)
                continue
            if type(now) is int and type(stored) is str and _DIGITS.fullmatch(stored):
                out[key] = int(stored)
                continue
        out[key] = _nested_from_text(stored) if isinstance(stored, str) else stored
    return out


#: An integer past 64 bits as the store keeps it (`to_column_value`).
_DIGITS = re.compile(r"-?[0-9]+")
