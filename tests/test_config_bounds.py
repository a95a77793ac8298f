"""Every number in the config has bounds: the worst illegal values (zero, negative, huge, NaN)
are refused by `check-config` and by `run` with exit 2 naming the key, the values at each
bound are taken. Also the settings that used to pass validation and break at runtime: an
empty store path, an unusable standard-webhooks secret, files that are not UTF-8."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import syncd.config
from syncd.cli import main
from syncd.config import Config

from .config_support import SINK_MODELS, SINK_SECRET, SINK_SECRET_ENV, config_text

API_KEY = "sk_test_bounds"

#: key -> (values refused, values taken at the bounds). Every numeric key is listed here; a
#: sink's keys as sinks.<type>.<key>, set in a [[sinks]] table of that type.
BOUNDS: dict[str, tuple[list[Any], list[Any]]] = {
    "api.timeout": (["0s", "99ms", "61m", "99999999999999d"], ["100ms", "1h"]),
    "api.connect_timeout": (["0s", "99ms", "2h"], ["100ms", "1h"]),
    "api.max_response": ([-1, 0, 1023, "5GiB"], [1024, "1KiB", "4GiB"]),
    "api.max_connections": ([0, -1, 101, 2**63 - 1], [1, 100]),
    "api.visibility_lag": (["61m", -1, "99999999999999d"], ["0s", "1h"]),
    "poll.interval": (["0s", "99ms", "366d", "99999999999999d"], ["100ms", "365d"]),
    "poll.safety_interval": (["0s", "99ms", "366d"], ["100ms", "365d"]),
    "poll.lookback": (["25h", "99999999999999d", -1], ["0s", "24h"]),
    "poll.page_size": ([0, -5, 1001], [1, 1000]),
    "poll.full_relist_interval": (["0s", "999ms", "366d"], ["1s", "365d"]),
    "poll.max_clock_skew": (["25h", -1, "99999999999999d"], ["0s", "24h"]),
    "poll.max_pages": ([0, -1, 10_000_001], [1, 10_000_000]),
    "poll.max_tombstone_ratio": ([math.nan, math.inf, -0.01, 1.01], [0.0, 1.0]),
    "poll.tombstone_floor": ([-1, 10_000_001], [0, 10_000_000]),
    "poll.jitter": (["61m", "99999999999999d"], ["0s", "1h"]),
    "webhook.header_timeout": (["0s", "3601s", "99999999999999d"], ["1ms", "1h"]),
    "webhook.body_timeout": (["0s", "3601s", "99999999999999d"], ["1ms", "1h"]),
    "webhook.idle_timeout": (["0ms", "3601s"], ["1ms", "1h"]),
    "webhook.max_header_bytes": ([-1, 0, 1023, 16777217], ["1KiB", "16MiB"]),
    "webhook.max_headers": ([0, 7, 10001], [8, 10000]),
    "webhook.max_connections": ([0, 15, 65537], [16, 65536]),
    "webhook.tolerance": (["0s", "999ms", "25h"], ["1s", "24h"]),
    "webhook.max_body": ([-1, 0, 1023, "65MiB", "99999999999GiB"], [1024, "1KiB", "64MiB"]),
    "webhook.max_backlog": ([0, -1, 1_000_000_001], [1, 1_000_000_000]),
    "webhook.max_backlog_bytes": ([0, 1023, "1025GiB"], [1024, "1KiB", "1024GiB"]),
    "webhook.rate_limit": (["0/s", "0.0/m", "1000001/s", "9" * 400 + "/s"], ["1/h", "1000000/s"]),
    "webhook.dedupe_retention": (["0s", "999ms", "366d"], ["1s", "365d"]),
    "webhook.audit_retention": (["0s", "0.5s", "366d"], ["1s", "365d"]),
    "fallback.silence": (["0s", "999ms", "366d", "99999999999999d"], ["1s", "365d"]),
    "fallback.missed_ratio": ([math.nan, math.inf, -0.01, 1.01], [0.0, 1.0]),
    "fallback.recover_after": ([0, -1, 101], [1, 100]),
    "webhook.ack_timeout": (["0s", "99ms", "5s", "4501ms"], ["100ms", "4.5s"]),
    "nats.replicas": ([0, -1, 6], [1, 5]),
    "nats.duplicate_window": (["0s", "999ms", "8d"], ["1s", "7d"]),
    "nats.batch_size": ([0, -1, 10_001], [1, 10_000]),
    "nats.ack_wait": (["0s", "999ms", "61m"], ["1s", "1h"]),
    "nats.connect_timeout": (["0s", "99ms", "61s"], ["100ms", "1m"]),
    "changes.retention": (["0s", "999ms", "366d"], ["1s", "365d"]),
    "changes.prune_interval": (["0s", "999ms", "25h", "99999999999999d"], ["1s", "1d"]),
    **{
        f"sinks.{kind}.{key}": bounds
        for kind in SINK_MODELS
        for key, bounds in {
            "timeout": (["0s", "99ms", "61m", "99999999999999d"], ["100ms", "1h"]),
            "max_attempts": ([0, -1, 1_000_001, 2**63 - 1], [1, 1_000_000]),
            "batch_size": ([0, -1, 10_001], [1, 10_000]),
        }.items()
    },
}


def _numeric_keys() -> set[str]:
    models = {
        section: info.annotation
        for section, info in Config.model_fields.items()
        if not info.exclude and section != "sinks"
    }
    models.update({f"sinks.{kind}": model for kind, model in SINK_MODELS.items()})
    return {
        f"{section}.{key}"
        for section, model in models.items()
        for key, field in model.model_fields.items()  # type: ignore[union-attr]
        if field.annotation in (int, float)
    }


def toml_value(value: Any) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return json.dumps(value)


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("CREDENTIALS_DIRECTORY", "SYNCD_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PETSTORE_API_KEY", API_KEY)
    monkeypatch.setenv("PETSTORE_WEBHOOK_SECRET", "hook-secret")
    monkeypatch.setenv(SINK_SECRET_ENV, SINK_SECRET)
    monkeypatch.setattr(syncd.config, "DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def assert_refused(result: Result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.output.startswith("syncd: config error: "), result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    for needle in needles:
        assert needle in result.output


def write(tmp_path: Path, text: str | bytes, name: str = "syncd.toml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_every_numeric_key_has_bounds_listed() -> None:
    assert set(BOUNDS) == _numeric_keys()


CASES = [(key, value) for key, (bad, _) in BOUNDS.items() for value in bad]


@pytest.mark.parametrize(("key", "value"), CASES, ids=[f"{k}={v!r}"[:60] for k, v in CASES])
def test_illegal_values_are_refused_naming_the_key(tmp_path: Path, key: str, value: Any) -> None:
    text, named = config_text(key, toml_value(value))
    path = write(tmp_path, text)
    assert_refused(invoke("check-config", "--config", str(path)), f"{path}: {named}")


LEGAL = [(key, value) for key, (_, good) in BOUNDS.items() for value in good]


@pytest.mark.parametrize(("key", "value"), LEGAL, ids=[f"{k}={v!r}" for k, v in LEGAL])
def test_values_at_the_bounds_are_taken(tmp_path: Path, key: str, value: Any) -> None:
    path = write(tmp_path, config_text(key, toml_value(value))[0])
    result = invoke("check-config", "--config", str(path))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("value", ["", "  ", ":memory:", "file:mirror.db?mode=memory"])
def test_a_store_path_that_is_not_a_file_is_refused(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, f"[store]\npath = {json.dumps(value)}\n")
    assert_refused(invoke("check-config", "--config", str(path)), "store.path", "outlives syncd")


def test_run_refuses_a_bad_value_before_starting(tmp_path: Path) -> None:
    store = tmp_path / "mirror.db"
    path = write(tmp_path, f'[store]\npath = "{store}"\n[webhook]\nrate_limit = "0/s"\n')
    assert_refused(invoke("run", "--config", str(path)), "webhook.rate_limit", "above 0")
    assert not store.exists()


@pytest.mark.parametrize(
    "secret",
    ["not base64 at all!", "whsec_***", "whsec_", "whsec_a"],
)
def test_standard_webhooks_secret_must_be_base64(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, secret: str
) -> None:
    monkeypatch.setenv("PETSTORE_WEBHOOK_SECRET", f"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw,{secret}")
    path = write(tmp_path, '[webhook]\nscheme = "standard-webhooks"\n')
    assert_refused(invoke("check-config", "--config", str(path)), "webhook.secret_env", "standard-webhooks")


def test_standard_webhooks_secret_with_or_without_prefix_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PETSTORE_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw,c2VjcmV0")
    path = write(tmp_path, '[webhook]\nscheme = "standard-webhooks"\n')
    result = invoke("check-config", "--config", str(path))
    assert result.exit_code == 0, result.output
    assert '"<2 set>"' in result.output


def test_a_config_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, b'[log]\nlevel = "\xff\xfe"\n')
    assert_refused(invoke("check-config", "--config", str(path)), str(path), "not UTF-8")
    assert_refused(invoke("run", "--config", str(path)), "not UTF-8")


def test_a_secret_file_that_is_not_utf8_names_the_key(tmp_path: Path) -> None:
    secret = tmp_path / "hook-secret"
    secret.write_bytes(b"\xc3\x28secret\n")
    path = write(tmp_path, f'[webhook]\nsecret_file = "{secret}"\n')
    assert_refused(invoke("check-config", "--config", str(path)), "webhook.secret_file", "not UTF-8")
