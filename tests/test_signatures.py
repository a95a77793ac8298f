import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks import Webhook, WebhookVerificationError
from starlette.datastructures import Headers

from syncd.signatures import (
    MAX_HEADER_LENGTH,
    SCHEMES,
    Reason,
    VerifyResult,
    make_verifier,
    sign,
)

TOLERANCE = 300.0
TS = 1_700_000_000
BODY = b'{"eventId":"evt_01HQZX3M8K","event":"order.created","data":{"id":12345}}'
MSG_ID = "evt_01HQZX3M8K"
# Standard Webhooks keys are base64; the other schemes use the string as is.
SECRETS = {
    "petstore": "petstore-secret",
    "standard-webhooks": "whsec_" + base64.b64encode(b"sixteen byte key").decode(),
    "stripe": "whsec_stripe_test_secret",
    "github": "It's a Secret to Everybody",
}
SIGNATURE_HEADER = {
    "petstore": "X-Webhook-Signature",
    "standard-webhooks": "webhook-signature",
    "stripe": "Stripe-Signature",
    "github": "X-Hub-Signature-256",
}


def verify(scheme: str, headers: dict[str, str], body: bytes = BODY, now: float = TS) -> VerifyResult:
    return make_verifier(scheme, [SECRETS[scheme]], tolerance=TOLERANCE).verify(headers, body, now=now)


def flip_last_char(text: str) -> str:
    # Stays in the same alphabet (hex or base64) so the header still parses.
    last = text[-2] if text.endswith("=") else text[-1]
    replacement = "1" if last != "1" else "2"
    idx = len(text) - (2 if text.endswith("=") else 1)
    return text[:idx] + replacement + text[idx + 1 :]


# --- published example values ------------------------------------------------


def test_github_docs_example() -> None:
    # docs.github.com, "Validating webhook deliveries", testing the signature.
    headers = sign("github", "It's a Secret to Everybody", b"Hello, World!", msg_id="d1", timestamp=0)
    assert headers == {
        "X-Hub-Signature-256": "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        "X-GitHub-Delivery": "d1",
    }
    verifier = make_verifier("github", ["It's a Secret to Everybody"], tolerance=0)
    assert verifier.verify(headers, b"Hello, World!", now=TS) == VerifyResult(True, "ok", "d1")


SW_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SW_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SW_TS = 1614265330
SW_BODY = b'{"test": 2432232314}'
SW_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@pytest.mark.parametrize("secret", [SW_SECRET, SW_SECRET.removeprefix("whsec_")])
def test_standard_webhooks_reference_vector(secret: str) -> None:
    # The vector of the reference library's test_sign_function.
    headers = sign("standard-webhooks", secret, SW_BODY, msg_id=SW_ID, timestamp=SW_TS)
    assert headers == {
        "webhook-id": SW_ID,
        "webhook-timestamp": str(SW_TS),
        "webhook-signature": SW_SIG,
    }
    result = make_verifier("standard-webhooks", [secret], tolerance=TOLERANCE).verify(
        headers, SW_BODY, now=SW_TS
    )
    assert result == VerifyResult(True, "ok", SW_ID, SW_TS)


def test_standard_webhooks_multi_signature_header() -> None:
    # From the reference library's test_multi_sig_payload_is_valid: other
    # versions and wrong v1 entries around one valid signature.
    bogus = "Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="
    header = f"v1,{bogus} v2,{bogus} {SW_SIG} v1,{bogus}"
    headers = {"webhook-id": SW_ID, "webhook-timestamp": str(SW_TS), "webhook-signature": header}
    verifier = make_verifier("standard-webhooks", [SW_SECRET], tolerance=TOLERANCE)
    assert verifier.verify(headers, SW_BODY, now=SW_TS).ok
    headers["webhook-signature"] = f"v1,{bogus} v2,{bogus}"
    assert verifier.verify(headers, SW_BODY, now=SW_TS).reason == Reason.BAD_SIGNATURE


# --- independent implementations ---------------------------------------------


def test_standard_webhooks_library_verifies_our_signature() -> None:
    now = int(time.time())
    headers = sign("standard-webhooks", SW_SECRET, BODY, msg_id=MSG_ID, timestamp=now)
    assert Webhook(SW_SECRET).verify(BODY, headers, json_parse=False) is None
    with pytest.raises(WebhookVerificationError):
        Webhook(SW_SECRET).verify(BODY + b" ", headers, json_parse=False)


def test_we_verify_standard_webhooks_library_signature() -> None:
    signature = Webhook(SW_SECRET).sign(
        msg_id=MSG_ID, timestamp=datetime.fromtimestamp(TS, tz=UTC), data=BODY.decode()
    )
    headers = {"Webhook-Id": MSG_ID, "Webhook-Timestamp": str(TS), "Webhook-Signature": signature}
    result = make_verifier("standard-webhooks", [SW_SECRET], tolerance=TOLERANCE).verify(
        headers, BODY, now=TS
    )
    assert result == VerifyResult(True, "ok", MSG_ID, TS)


def test_petstore_is_hex_hmac_of_raw_body() -> None:
    expected = hmac.new(b"petstore-secret", BODY, hashlib.sha256).hexdigest()
    headers = sign("petstore", "petstore-secret", BODY, msg_id=MSG_ID, timestamp=TS)
    assert headers == {"X-Webhook-Signature": expected, "X-Webhook-Id": MSG_ID}
    assert verify("petstore", headers) == VerifyResult(True, "ok", MSG_ID)


def test_stripe_documented_algorithm() -> None:
    # Stripe docs, "verify manually": HMAC-SHA256 keyed with the endpoint
    # secret string over "<t>.<payload>", hex, in the v1 element.
    secret = SECRETS["stripe"]
    expected = hmac.new(secret.encode(), f"{TS}.".encode() + BODY, hashlib.sha256).hexdigest()
    headers = sign("stripe", secret, BODY, msg_id=MSG_ID, timestamp=TS)
    assert headers == {"Stripe-Signature": f"t={TS},v1={expected}"}
    assert verify("stripe", headers) == VerifyResult(True, "ok", None, TS)


def test_stripe_several_v1_and_v0_elements() -> None:
    good = sign("stripe", SECRETS["stripe"], BODY, msg_id=MSG_ID, timestamp=TS)
    good_v1 = good["Stripe-Signature"].split(",")[1]
    header = f"t={TS},v1={'0' * 64},{good_v1},v0={'ab' * 32}"
    assert verify("stripe", {"Stripe-Signature": header}).ok
    header = f"t={TS},v1={'0' * 64},v0={good_v1.removeprefix('v1=')}"
    assert verify("stripe", {"Stripe-Signature": header}).reason == Reason.BAD_SIGNATURE


def test_stripe_two_timestamps_rejected() -> None:
    good = sign("stripe", SECRETS["stripe"], BODY, msg_id=MSG_ID, timestamp=TS)
    header = good["Stripe-Signature"] + f",t={TS + 1}"
    assert verify("stripe", {"Stripe-Signature": header}).reason == Reason.MALFORMED_HEADER


def test_github_is_prefixed_hex_hmac() -> None:
    expected = hmac.new(SECRETS["github"].encode(), BODY, hashlib.sha256).hexdigest()
    headers = sign("github", SECRETS["github"], BODY, msg_id=MSG_ID, timestamp=TS)
    assert headers["X-Hub-Signature-256"] == "sha256=" + expected


# --- one-character changes ----------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_one_character_body_change_fails(scheme: str) -> None:
    headers = sign(scheme, SECRETS[scheme], BODY, msg_id=MSG_ID, timestamp=TS)
    assert verify(scheme, headers).ok
    tampered = BODY.replace(b"12345", b"12346")
    assert verify(scheme, headers, tampered).reason == Reason.BAD_SIGNATURE


@pytest.mark.parametrize("scheme", SCHEMES)
def test_one_character_signature_change_fails(scheme: str) -> None:
    headers = sign(scheme, SECRETS[scheme], BODY, msg_id=MSG_ID, timestamp=TS)
    name = SIGNATURE_HEADER[scheme]
    headers[name] = flip_last_char(headers[name])
    assert verify(scheme, headers).reason == Reason.BAD_SIGNATURE


def test_standard_webhooks_timestamp_and_id_are_signed() -> None:
    headers = sign("standard-webhooks", SW_SECRET, BODY, msg_id=MSG_ID, timestamp=TS)
    verifier = make_verifier("standard-webhooks", [SW_SECRET], tolerance=TOLERANCE)
    moved = {**headers, "webhook-timestamp": str(TS + 1)}
    assert verifier.verify(moved, BODY, now=TS).reason == Reason.BAD_SIGNATURE
    renamed = {**headers, "webhook-id": MSG_ID[:-1] + "L"}
    assert verifier.verify(renamed, BODY, now=TS).reason == Reason.BAD_SIGNATURE


def test_stripe_timestamp_is_signed() -> None:
    header = sign("stripe", SECRETS["stripe"], BODY, msg_id=MSG_ID, timestamp=TS)
    moved = header["Stripe-Signature"].replace(f"t={TS}", f"t={TS + 1}")
    assert verify("stripe", {"Stripe-Signature": moved}).reason == Reason.BAD_SIGNATURE


# --- rotation -----------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_rotation_accepts_old_and_new_until_old_is_removed(scheme: str) -> None:
    old = SECRETS[scheme]
    new = "whsec_" + base64.b64encode(b"the next key!").decode()
    old_headers = sign(scheme, old, BODY, msg_id=MSG_ID, timestamp=TS)
    new_headers = sign(scheme, new, BODY, msg_id=MSG_ID, timestamp=TS)
    both = make_verifier(scheme, [old, new], tolerance=TOLERANCE)
    assert both.verify(old_headers, BODY, now=TS).ok
    assert both.verify(new_headers, BODY, now=TS).ok
    only_new = make_verifier(scheme, [new], tolerance=TOLERANCE)
    assert only_new.verify(new_headers, BODY, now=TS).ok
    assert only_new.verify(old_headers, BODY, now=TS).reason == Reason.BAD_SIGNATURE


# --- tolerance ----------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["standard-webhooks", "stripe"])
@pytest.mark.parametrize(
    ("offset", "ok"),
    [
        (0.0, True),
        (TOLERANCE, True),  # delivered exactly at the limit, late
        (-TOLERANCE, True),  # receiver clock behind the provider's
        (TOLERANCE + 1, False),  # replayed too late
        (-TOLERANCE - 1, False),  # dated in the future
    ],
)
def test_tolerance_in_both_directions(scheme: str, offset: float, ok: bool) -> None:
    headers = sign(scheme, SECRETS[scheme], BODY, msg_id=MSG_ID, timestamp=TS)
    result = verify(scheme, headers, now=TS + offset)
    assert result.ok is ok
    assert result.timestamp == TS
    if not ok:
        assert result.reason == Reason.TIMESTAMP_OUTSIDE_TOLERANCE


@pytest.mark.parametrize("scheme", ["petstore", "github"])
def test_untimestamped_schemes_ignore_clock(scheme: str) -> None:
    headers = sign(scheme, SECRETS[scheme], BODY, msg_id=MSG_ID, timestamp=TS)
    assert verify(scheme, headers, now=TS + 10 * 365 * 86400).ok


# --- headers, errors, hostile input -------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_header_names_are_case_insensitive(scheme: str) -> None:
    headers = sign(scheme, SECRETS[scheme], BODY, msg_id=MSG_ID, timestamp=TS)
    upper = {k.upper(): v for k, v in headers.items()}
    assert verify(scheme, upper).ok
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    verifier = make_verifier(scheme, [SECRETS[scheme]], tolerance=TOLERANCE)
    assert verifier.verify(Headers(raw=raw), BODY, now=TS).ok


@pytest.mark.parametrize("scheme", SCHEMES)
def test_missing_signature(scheme: str) -> None:
    headers = sign(scheme, SECRETS[scheme], BODY, msg_id=MSG_ID, timestamp=TS)
    del headers[SIGNATURE_HEADER[scheme]]
    assert verify(scheme, headers) == VerifyResult(
        False,
        Reason.MISSING_SIGNATURE,
        headers.get("X-Webhook-Id", headers.get("X-GitHub-Delivery")),
    )


@pytest.mark.parametrize(
    ("header", "reason"),
    [("webhook-id", Reason.MISSING_ID), ("webhook-timestamp", Reason.MISSING_TIMESTAMP)],
)
def test_standard_webhooks_missing_parts(header: str, reason: Reason) -> None:
    headers = sign("standard-webhooks", SW_SECRET, BODY, msg_id=MSG_ID, timestamp=TS)
    del headers[header]
    verifier = make_verifier("standard-webhooks", [SW_SECRET], tolerance=TOLERANCE)
    assert verifier.verify(headers, BODY, now=TS).reason == reason


@pytest.mark.parametrize(
    ("scheme", "value"),
    [
        ("petstore", "not-hex"),
        ("petstore", "é" * 64),
        ("github", "sha1=" + "ab" * 20),
        ("github", "sha256=zz"),
        ("stripe", f"t={TS}"),
        ("stripe", f"t=-{TS},v1={'ab' * 32}"),
        ("stripe", f"t=0{TS},v1={'ab' * 32}"),
        ("stripe", f"t={TS}.5,v1={'ab' * 32}"),
        ("stripe", "v1=" + "ab" * 32),
        ("standard-webhooks", "v1a,abcd"),
        ("standard-webhooks", "v1,***"),
        ("standard-webhooks", "garbage"),
    ],
)
def test_malformed_signature_headers(scheme: str, value: str) -> None:
    headers = sign(scheme, SECRETS[scheme], BODY, msg_id=MSG_ID, timestamp=TS)
    headers[SIGNATURE_HEADER[scheme]] = value
    result = verify(scheme, headers)
    assert not result.ok
    assert result.reason in {Reason.MALFORMED_HEADER, Reason.MISSING_TIMESTAMP}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_huge_header_is_refused_cheaply(scheme: str) -> None:
    headers = sign(scheme, SECRETS[scheme], BODY, msg_id=MSG_ID, timestamp=TS)
    name = SIGNATURE_HEADER[scheme]
    headers[name] = headers[name] + " " + "a" * (MAX_HEADER_LENGTH + 1)
    assert verify(scheme, headers).reason == Reason.MALFORMED_HEADER


def test_standard_webhooks_bad_timestamp_text() -> None:
    headers = sign("standard-webhooks", SW_SECRET, BODY, msg_id=MSG_ID, timestamp=TS)
    verifier = make_verifier("standard-webhooks", [SW_SECRET], tolerance=TOLERANCE)
    for text in ("hello", f" {TS}", f"{TS}.0", "9" * 40, "١٢٣"):
        result = verifier.verify({**headers, "webhook-timestamp": text}, BODY, now=TS)
        assert result.reason == Reason.MALFORMED_HEADER


def test_unknown_scheme_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"'hmac-md5'.*petstore, standard-webhooks, stripe, github"):
        make_verifier("hmac-md5", ["s"], tolerance=1)
    with pytest.raises(ValueError, match="'hmac-md5'"):
        sign("hmac-md5", "s", b"", msg_id="x", timestamp=0)


@pytest.mark.parametrize("secret", ["whsec_not base64!", "whsec_", ""])
def test_bad_standard_webhooks_secret_rejected_at_build(secret: str) -> None:
    with pytest.raises(ValueError, match="standard-webhooks"):
        make_verifier("standard-webhooks", [secret], tolerance=1)


def test_empty_secret_list_and_empty_secret_rejected() -> None:
    with pytest.raises(ValueError, match="no webhook secret"):
        make_verifier("github", [], tolerance=1)
    with pytest.raises(ValueError, match="empty webhook secret"):
        make_verifier("petstore", ["good", ""], tolerance=1)
    with pytest.raises(TypeError):
        make_verifier("petstore", "one-string", tolerance=1)


# --- properties ---------------------------------------------------------------

text_secrets = st.text(min_size=1, max_size=64)
key_bytes = st.binary(min_size=1, max_size=64)
ids = st.text(min_size=1, max_size=40).filter(lambda s: "\n" not in s and s.strip() == s)


def secret_for(scheme: str, text: str, key: bytes) -> str:
    if scheme == "standard-webhooks":
        return "whsec_" + base64.b64encode(key).decode()
    return text


@given(
    scheme=st.sampled_from(SCHEMES),
    body=st.binary(max_size=2048),
    text=text_secrets,
    key=key_bytes,
    msg_id=ids,
    timestamp=st.integers(min_value=0, max_value=2**40),
)
def test_sign_then_verify_round_trips(
    scheme: str, body: bytes, text: str, key: bytes, msg_id: str, timestamp: int
) -> None:
    secret = secret_for(scheme, text, key)
    headers = sign(scheme, secret, body, msg_id=msg_id, timestamp=timestamp)
    result = make_verifier(scheme, [secret], tolerance=0).verify(headers, body, now=timestamp)
    assert result.ok, result


@given(
    scheme=st.sampled_from(SCHEMES),
    body=st.binary(min_size=1, max_size=2048),
    text=text_secrets,
    key=key_bytes,
    data=st.data(),
)
def test_any_single_byte_mutation_fails(
    scheme: str, body: bytes, text: str, key: bytes, data: st.DataObject
) -> None:
    secret = secret_for(scheme, text, key)
    headers = sign(scheme, secret, body, msg_id=MSG_ID, timestamp=TS)
    index = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    delta = data.draw(st.integers(min_value=1, max_value=255))
    mutated = bytearray(body)
    mutated[index] ^= delta
    result = make_verifier(scheme, [secret], tolerance=TOLERANCE).verify(headers, bytes(mutated), now=TS)
    assert result.reason == Reason.BAD_SIGNATURE


header_names = st.sampled_from(
    [
        "X-Webhook-Signature",
        "X-Webhook-Id",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "Stripe-Signature",
        "X-Hub-Signature-256",
        "X-GitHub-Delivery",
    ]
)


@given(
    scheme=st.sampled_from(SCHEMES),
    headers=st.dictionaries(header_names, st.text(max_size=300)),
    body=st.binary(max_size=64),
    now=st.floats(allow_nan=True, allow_infinity=True),
)
def test_garbage_headers_never_raise(scheme: str, headers: dict[str, str], body: bytes, now: float) -> None:
    result = make_verifier(scheme, [secret_for(scheme, "s", b"k")], tolerance=TOLERANCE).verify(
        headers, body, now=now
    )
    assert isinstance(result, VerifyResult)
    assert not result.ok
    assert result.reason in set(Reason) - {Reason.OK}
