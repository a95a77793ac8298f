"""The inbox of `syncd receive`: a verified delivery is published to the inbox stream, and
`submit` returns only once JetStream's PubAck says it is stored (on a majority of the
stream's replicas). `syncd run` with `webhook.inbox = "nats"` reads it back with
`from_message` (syncd.push.consumer).

The message. Subject `syncd.inbox.<resource>` (`other` for events of no resource, such as
`webhook.test`); payload the raw body, exactly the bytes the signature was checked over;
header `Syncd-Delivery` the rest of the delivery (event id, type, received time, client,
audit headers) as ASCII JSON, so no value can break the header block; `Nats-Msg-Id` the
event id, for JetStream's deduplication. An event id that is not plain printable ASCII
(NATS headers carry no line breaks, and a Msg-Id should be comparable byte for byte) is
deduplicated by `sha256:<hex>` of it instead; the mirror dedupes on the id itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import nats.errors
import nats.js.errors
from nats.js.api import PubAck

from syncd.core.records import resource_for_event
from syncd.jetstream import INBOX_SUBJECT_PREFIX, MSG_ID, JetStreamLink
from syncd.metrics import Metrics
from syncd.push.inbox import Delivery, InboxUnavailableError, SubmitResult

DELIVERY_HEADER: Final = "Syncd-Delivery"
_PLAIN_ID: Final = re.compile(r"[!-~]{1,256}")


def msg_id(event_id: str) -> str:
    if _PLAIN_ID.fullmatch(event_id):
        return event_id
    return "sha256:" + hashlib.sha256(event_id.encode("utf-8", "surrogatepass")).hexdigest()


def subject_for(event_type: str | None) -> str:
    resource = resource_for_event(event_type) if event_type else None
    return f"{INBOX_SUBJECT_PREFIX}.{resource or 'other'}"


def delivery_headers(delivery: Delivery) -> dict[str, str]:
    meta = {
        "id": delivery.event_id,
        "type": delivery.event_type,
        "received_at": delivery.received_at,
        "client": delivery.client,
        "headers": delivery.headers,
    }
    # ensure_ascii: control characters and non-ASCII come out as \\u escapes.
    return {MSG_ID: msg_id(delivery.event_id), DELIVERY_HEADER: json.dumps(meta, ensure_ascii=True)}


def from_message(headers: Mapping[str, str] | None, body: bytes) -> Delivery:
    """The delivery a message of the inbox stream carries. Raises ValueError when the
    message was not published by `syncd receive` (no or a malformed Syncd-Delivery)."""
    raw = (headers or {}).get(DELIVERY_HEADER)
    if raw is None:
        raise ValueError(f"no {DELIVERY_HEADER} header")
    try:
        meta: Any = json.loads(raw)
        event_id, event_type = meta["id"], meta["type"]
        received_at, client, kept = float(meta["received_at"]), meta["client"], meta["headers"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"malformed {DELIVERY_HEADER} header: {exc}") from None
    if not isinstance(event_id, str) or not isinstance(client, str) or not isinstance(kept, dict):
        raise ValueError(f"malformed {DELIVERY_HEADER} header")
    if event_type is not None and not isinstance(event_type, str):
        raise ValueError(f"malformed {DELIVERY_HEADER} header: type")
    return Delivery(
        event_id, received_at, client, {str(k): str(v) for k, v in kept.items()}, body, event_type
    )


class JetStreamInbox:
    """Publishes deliveries through `link` to `stream`, waiting up to `ack_timeout` for the
    PubAck. A repeat within the stream's duplicate window is "duplicate", as the SQLite
    inbox says of a known event id."""

    def __init__(
        self,
        link: JetStreamLink,
        stream: str,
        *,
        ack_timeout: float,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._link = link
        self._stream = stream
        self.ack_timeout = ack_timeout
        self._metrics = metrics
        self._clock = clock
        #: When a PubAck last came back: what "deliveries are flowing" means here.
        self.last_delivery_at: float | None = None
        self.published = 0

    async def submit(self, delivery: Delivery) -> SubmitResult:
        js = self._link.js
        problem = self._link.status()
        if js is None or problem is not None:
            raise InboxUnavailableError(delivery.event_id, problem or "not connected to NATS", retry_after=5)
        # publish_async and one deadline rather than js.publish: that is a request, which
        # nats-py waits for with asyncio.wait_for (a task and a timer per delivery).
        future: asyncio.Future[PubAck] | None = None
        try:
            async with asyncio.timeout(self.ack_timeout):
                future = await js.publish_async(
                    subject_for(delivery.event_type),
                    delivery.body,
                    stream=self._stream,
                    headers=delivery_headers(delivery),
                )
                ack = await future
        except TimeoutError:
            if future is not None:
                future.cancel()
            raise InboxUnavailableError(
                delivery.event_id, f"no PubAck from JetStream within {self.ack_timeout:g}s"
            ) from None
        except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
            raise InboxUnavailableError(
                delivery.event_id, f"JetStream: {type(exc).__name__}: {exc}", retry_after=5
            ) from None
        self.published += 1
        self.last_delivery_at = self._clock()
        return "duplicate" if ack.duplicate else "accepted"
