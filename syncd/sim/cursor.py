"""Opaque listing cursors.

A cursor carries the key of the last record it returned, the listing's `since` and `limit`,
the resource and the time it was issued. It is MAC'd with a per-process key, so an edited or
foreign cursor is refused as malformed rather than silently paging from the wrong place.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

from syncd.sim.table import RecordId

_PREFIX = "c_"
_MAC_BYTES = 10


class CursorError(ValueError):
    """A cursor that this simulator did not issue, or issued for another listing."""


@dataclass(frozen=True, slots=True)
class Cursor:
    resource: str
    last_ms: int
    last_id: RecordId
    since_ms: int | None
    limit: int
    issued_ms: int


class CursorCodec:
    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(16)

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:_MAC_BYTES]

    def encode(self, cursor: Cursor) -> str:
        payload = json.dumps(
            [
                cursor.resource,
                cursor.last_ms,
                cursor.last_id,
                cursor.since_ms,
                cursor.limit,
                cursor.issued_ms,
            ],
            separators=(",", ":"),
        ).encode()
        token = base64.urlsafe_b64encode(self._mac(payload) + payload).rstrip(b"=")
        return _PREFIX + token.decode("ascii")

    def decode(self, text: str) -> Cursor:
        if not text.startswith(_PREFIX) or len(text) > 512:
            raise CursorError(f"cursor {text[:40]!r} is malformed")
        token = text[len(_PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise CursorError(f"cursor {text[:40]!r} is malformed") from None
        mac, payload = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise CursorError(f"cursor {text[:40]!r} was not issued by this API")
        resource, last_ms, last_id, since_ms, limit, issued_ms = json.loads(payload)
        return Cursor(resource, last_ms, last_id, since_ms, limit, issued_ms)
