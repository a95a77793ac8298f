"""Webhook signature schemes: signing (for the simulator) and verification.

Every scheme authenticates the raw request body bytes, never a re-serialized
body. Digests are compared with ``hmac.compare_digest``. A verifier holds
several secrets at once so a secret can be rotated without dropping
deliveries: a delivery passes if any of its signatures matches any secret.

Secrets and keys:

- ``petstore``, ``stripe``, ``github``: the HMAC key is the UTF-8 encoding of
  the secret string, as those providers document (Stripe's ``whsec_...``
  string is used verbatim, not decoded).
- ``standard-webhooks``: the key is base64 encoded, with or without the
  ``whsec_`` prefix, the same as the reference ``standardwebhooks`` library.
  Unlike that library (which silently drops non-base64 characters) a secret
  that is not valid base64 is rejected when the verifier is built, so a
  mistyped secret fails at start-up instead of rejecting every delivery.

Verification never raises on hostile input: it returns a failed
``VerifyResult`` whose ``reason`` is for logs and audit only; the HTTP layer
answers 401 without saying which check failed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Protocol

SCHEMES: tuple[str, ...] = ("petstore", "standard-webhooks", "stripe", "github")

# Real signature headers are well under 1 KiB; the cap bounds the work a
# hostile header can cause (parsing, hex/base64 decoding, comparisons).
MAX_HEADER_LENGTH: Final = 4096

_STANDARD_PREFIX: Final = "whsec_"
# Canonical decimal seconds only: no sign, spaces or leading zeros, so the
# text that was signed is exactly str(timestamp).
_TIMESTAMP: Final = re.compile(r"0|[1-9][0-9]{0,17}")


class Reason(StrEnum):
    """Why a delivery passed or failed; values are stable strings for logs."""

    OK = "ok"
    MISSING_SIGNATURE = "missing_signature"
    MISSING_ID = "missing_id"
    MISSING_TIMESTAMP = "missing_timestamp"
    MALFORMED_HEADER = "malformed_header"
    BAD_SIGNATURE = "bad_signature"
    TIMESTAMP_OUTSIDE_TOLERANCE = "timestamp_outside_tolerance"


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """Outcome of one verification.

    ``delivery_id`` is the provider's delivery id header when present. Only
    ``standard-webhooks`` signs it; for the other schemes it is informational
    and the event id inside the (signed) body is the one to trust.
    ``timestamp`` is set for timestamped schemes once it parsed.
    """

    ok: bool
    reason: str
    delivery_id: str | None = None
    timestamp: int | None = None


class Verifier(Protocol):
    scheme: str

    def verify(self, headers: Mapping[str, str], body: bytes, *, now: float) -> VerifyResult: ...


def _hmac_sha256(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _utf8_key(scheme: str, secret: str) -> bytes:
    if not secret:
        raise ValueError(f"empty webhook secret for scheme {scheme!r}")
    return secret.encode("utf-8")


def _standard_key(secret: str) -> bytes:
    raw = secret.removeprefix(_STANDARD_PREFIX)
    # Providers often hand out unpadded base64; restore the padding.
    padded = raw + "=" * (-len(raw) % 4)
    try:
        key = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(
            "standard-webhooks secret must be base64, optionally prefixed with 'whsec_'"
        ) from exc
    if not key:
        raise ValueError("empty webhook secret for scheme 'standard-webhooks'")
    return key


def _key(scheme: str, secret: str) -> bytes:
    if scheme == "standard-webhooks":
        return _standard_key(secret)
    return _utf8_key(scheme, secret)


def _check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown webhook signature scheme {scheme!r}; valid schemes: {', '.join(SCHEMES)}")


def _lower_keys(headers: Mapping[str, str]) -> Mapping[str, str]:
    # Starlette's Headers is already case-insensitive, but a plain dict is
    # not; one normalised copy serves both.
    out: dict[str, str] = {}
    for key, value in headers.items():
        if isinstance(key, str) and isinstance(value, str):
            out[key.lower()] = value
    return out


def _unhex(text: str) -> bytes | None:
    if not text.isascii():
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


def _unbase64(text: str) -> bytes | None:
    if not text.isascii():
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _any_match(expected: Sequence[bytes], candidates: Sequence[bytes]) -> bool:
    # No early exit: the time taken does not depend on which pair matched.
    matched = False
    for want in expected:
        for got in candidates:
            matched |= hmac.compare_digest(want, got)
    return matched


def _parse_timestamp(text: str) -> int | None:
    if _TIMESTAMP.fullmatch(text) is None:
        return None
    return int(text)


def _within(timestamp: int, now: float, tolerance: float) -> bool:
    return abs(now - timestamp) <= tolerance


class _BodyHexVerifier:
    """HMAC-SHA256 over the body alone, hex in one header (petstore, github)."""

    def __init__(
        self, scheme: str, keys: Sequence[bytes], sig_header: str, prefix: str, id_header: str
    ) -> None:
        self.scheme = scheme
        self._keys = tuple(keys)
        self._sig_header = sig_header.lower()
        self._prefix = prefix
        self._id_header = id_header.lower()

    def verify(self, headers: Mapping[str, str], body: bytes, *, now: float) -> VerifyResult:
        h = _lower_keys(headers)
        delivery_id = h.get(self._id_header)
        if delivery_id is not None and len(delivery_id) > MAX_HEADER_LENGTH:
            delivery_id = None
        value = h.get(self._sig_header)
        if not value:
            return VerifyResult(False, Reason.MISSING_SIGNATURE, delivery_id)
        value = value.strip()
        if len(value) > MAX_HEADER_LENGTH or not value.startswith(self._prefix):
            return VerifyResult(False, Reason.MALFORMED_HEADER, delivery_id)
        given = _unhex(value[len(self._prefix) :])
        if given is None:
            return VerifyResult(False, Reason.MALFORMED_HEADER, delivery_id)
        expected = [_hmac_sha256(key, body) for key in self._keys]
        if _any_match(expected, [given]):
            return VerifyResult(True, Reason.OK, delivery_id)
        return VerifyResult(False, Reason.BAD_SIGNATURE, delivery_id)


class _StandardWebhooksVerifier:
    """https://www.standardwebhooks.com: HMAC over ``{id}.{timestamp}.{body}``."""

    scheme = "standard-webhooks"

    def __init__(self, keys: Sequence[bytes], tolerance: float) -> None:
        self._keys = tuple(keys)
        self._tolerance = tolerance

    def verify(self, headers: Mapping[str, str], body: bytes, *, now: float) -> VerifyResult:
        h = _lower_keys(headers)
        msg_id = h.get("webhook-id")
        ts_text = h.get("webhook-timestamp")
        sig_text = h.get("webhook-signature")
        if not sig_text:
            return VerifyResult(False, Reason.MISSING_SIGNATURE)
        if not msg_id:
            return VerifyResult(False, Reason.MISSING_ID)
        if not ts_text:
            return VerifyResult(False, Reason.MISSING_TIMESTAMP)
        if max(len(msg_id), len(ts_text), len(sig_text)) > MAX_HEADER_LENGTH:
            return VerifyResult(False, Reason.MALFORMED_HEADER)
        timestamp = _parse_timestamp(ts_text)
        if timestamp is None:
            return VerifyResult(False, Reason.MALFORMED_HEADER, msg_id)
        try:
            prefix = f"{msg_id}.{timestamp}.".encode()
        except UnicodeEncodeError:
            return VerifyResult(False, Reason.MALFORMED_HEADER, None, timestamp)
        if not _within(timestamp, now, self._tolerance):
            return VerifyResult(False, Reason.TIMESTAMP_OUTSIDE_TOLERANCE, msg_id, timestamp)
        given: list[bytes] = []
        for entry in sig_text.split():
            version, sep, encoded = entry.partition(",")
            # v1a (asymmetric) and future versions are skipped, as the spec asks.
            if sep and version == "v1":
                decoded = _unbase64(encoded)
                if decoded is not None:
                    given.append(decoded)
        if not given:
            return VerifyResult(False, Reason.MALFORMED_HEADER, msg_id, timestamp)
        expected = [_hmac_sha256(key, prefix + body) for key in self._keys]
        if _any_match(expected, given):
            return VerifyResult(True, Reason.OK, msg_id, timestamp)
        return VerifyResult(False, Reason.BAD_SIGNATURE, msg_id, timestamp)


class _StripeVerifier:
    """Stripe: ``Stripe-Signature: t=<ts>,v1=<hex>[,v1=<hex>...]``."""

    scheme = "stripe"

    def __init__(self, keys: Sequence[bytes], tolerance: float) -> None:
        self._keys = tuple(keys)
        self._tolerance = tolerance

    def verify(self, headers: Mapping[str, str], body: bytes, *, now: float) -> VerifyResult:
        h = _lower_keys(headers)
        value = h.get("stripe-signature")
        if not value:
            return VerifyResult(False, Reason.MISSING_SIGNATURE)
        if len(value) > MAX_HEADER_LENGTH:
            return VerifyResult(False, Reason.MALFORMED_HEADER)
        ts_texts: list[str] = []
        given: list[bytes] = []
        for item in value.split(","):
            name, sep, text = item.strip().partition("=")
            if not sep:
                continue
            if name == "t":
                ts_texts.append(text)
            elif name == "v1":
                decoded = _unhex(text)
                if decoded is not None:
                    given.append(decoded)
        if not ts_texts:
            return VerifyResult(False, Reason.MISSING_TIMESTAMP)
        # Two timestamps would make it ambiguous which one was signed.
        if len(ts_texts) > 1:
            return VerifyResult(False, Reason.MALFORMED_HEADER)
        timestamp = _parse_timestamp(ts_texts[0])
        if timestamp is None or not given:
            return VerifyResult(False, Reason.MALFORMED_HEADER, None, timestamp)
        if not _within(timestamp, now, self._tolerance):
            return VerifyResult(False, Reason.TIMESTAMP_OUTSIDE_TOLERANCE, None, timestamp)
        signed = f"{timestamp}.".encode() + body
        expected = [_hmac_sha256(key, signed) for key in self._keys]
        if _any_match(expected, given):
            return VerifyResult(True, Reason.OK, None, timestamp)
        return VerifyResult(False, Reason.BAD_SIGNATURE, None, timestamp)


def _build_petstore(keys: Sequence[bytes], tolerance: float) -> Verifier:
    return _BodyHexVerifier("petstore", keys, "X-Webhook-Signature", "", "X-Webhook-Id")


def _build_github(keys: Sequence[bytes], tolerance: float) -> Verifier:
    return _BodyHexVerifier("github", keys, "X-Hub-Signature-256", "sha256=", "X-GitHub-Delivery")


_BUILDERS: Final[dict[str, Callable[[Sequence[bytes], float], Verifier]]] = {
    "petstore": _build_petstore,
    "standard-webhooks": _StandardWebhooksVerifier,
    "stripe": _StripeVerifier,
    "github": _build_github,
}


def make_verifier(scheme: str, secrets: Sequence[str], *, tolerance: float) -> Verifier:
    """Build the verifier for ``scheme`` accepting any of ``secrets``.

    ``tolerance`` (seconds) bounds how far a signed timestamp may be from
    ``now`` in either direction; schemes without a timestamp ignore it.
    """
    _check_scheme(scheme)
    if isinstance(secrets, str):
        raise TypeError("secrets must be a sequence of strings, not one string")
    if not secrets:
        raise ValueError(f"no webhook secret configured for scheme {scheme!r}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 seconds, got {tolerance}")
    keys = [_key(scheme, secret) for secret in secrets]
    return _BUILDERS[scheme](keys, tolerance)


def sign(scheme: str, secret: str, body: bytes, *, msg_id: str, timestamp: int) -> dict[str, str]:
    """The headers a provider using ``scheme`` sends with ``body``.

    ``msg_id`` and ``timestamp`` are sent only where the scheme carries them.
    """
    _check_scheme(scheme)
    key = _key(scheme, secret)
    if scheme == "petstore":
        return {
            "X-Webhook-Signature": hmac.new(key, body, hashlib.sha256).hexdigest(),
            "X-Webhook-Id": msg_id,
        }
    if scheme == "github":
        return {
            "X-Hub-Signature-256": "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest(),
            "X-GitHub-Delivery": msg_id,
        }
    if scheme == "stripe":
        digest = hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
        return {"Stripe-Signature": f"t={timestamp},v1={digest}"}
    mac = _hmac_sha256(key, f"{msg_id}.{timestamp}.".encode() + body)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + base64.b64encode(mac).decode("ascii"),
    }
