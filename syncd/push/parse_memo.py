"""The parse of each webhook body, handed from the receiver (which must parse every body to
check it) to the inbox worker (which needs the same parse), so a body is parsed once on its
way to the mirror."""

from __future__ import annotations

from typing import Any


class ParsedBodies:
    """A bounded memo of parsed webhook bodies, from the receiver (which must parse every
    body to check it) to the worker (which needs the same parse), so a body is parsed once
    on its way to the mirror. A memo of a pure function: whoever misses parses the body
    itself, so the bound, restarts and rows that came from disk change nothing but speed.
    An entry is taken once; the oldest go first when the bound is reached."""

    # Small: a parse takes several times its body's bytes, and while the worker defers a
    # burst every acknowledged body would sit here until it is applied. A few thousand
    # bodies cover a worker that keeps up; a backlog is parsed again when it is applied.
    def __init__(self, max_bytes: int = 2 * 1024 * 1024) -> None:
        self._max_bytes = max_bytes
        self._items: dict[bytes, Any] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, body: bytes, parsed: Any) -> None:
        if body in self._items:
            return
        self._items[body] = parsed
        self._bytes += len(body)
        while self._bytes > self._max_bytes:
            oldest = next(iter(self._items))
            del self._items[oldest]
            self._bytes -= len(oldest)

    def take(self, body: bytes) -> Any:
        """The parse of `body` if it is here (then forgotten), else None."""
        parsed = self._items.pop(body, None)
        if parsed is not None:
            self._bytes -= len(body)
        return parsed


#: The process's memo (the receiver's inbox fills it, the inbox worker drains it).
parsed_bodies = ParsedBodies()
