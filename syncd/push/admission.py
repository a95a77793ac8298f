"""Who may deliver, and how often: client identity behind trusted proxies, per-client
rate limits, and the content types the receiver accepts. Pure logic, no I/O."""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Sequence

from syncd.config_values import Network


def in_networks(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def resolve_client(peer: str, forwarded_for: str | None, trusted: Sequence[Network]) -> str:
    """The client address. X-Forwarded-For counts only when the direct peer is a trusted
    proxy; then the right-most address that is not itself a trusted proxy is the client
    (anything left of it could have been written by the client)."""
    if not trusted or not forwarded_for or not in_networks(peer, trusted):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not in_networks(hop, trusted):
            return hop
    return hops[0] if hops else peer


class RateLimiter:
    """Token bucket per client (burst = one second's worth), over a bounded LRU of clients."""

    def __init__(self, rate: float, *, max_clients: int = 10_000) -> None:
        self.rate = rate
        self._max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def set_rate(self, rate: float) -> None:
        self.rate = rate

    def check(self, client: str, now: float) -> float | None:
        """None when allowed; otherwise the seconds until a token is available."""
        burst = max(1.0, self.rate)
        tokens, last = self._buckets.pop(client, (burst, now))
        tokens = min(burst, tokens + max(0.0, now - last) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[client] = (tokens, now)
        if len(self._buckets) > self._max_clients:
            self._buckets.popitem(last=False)
        return None if allowed else (1.0 - tokens) / self.rate


def json_content_type(value: str | None) -> bool:
    if value is None:
        return False
    if value == "application/json":  # what nearly every provider sends
        return True
    media, *params = value.split(";")
    if media.strip().lower() != "application/json":
        return False
    for param in params:
        name, _, val = param.partition("=")
        if name.strip().lower() == "charset" and val.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return False
    return True
