"""Log lines: text or JSON, and never a configured secret."""

from __future__ import annotations

import io
import json
import logging

import pytest

from syncd.config import LogConfig
from syncd.logs import REDACTED, setup_logging


def log_config(fmt: str, level: str = "info") -> LogConfig:
    return LogConfig.model_validate({"format": fmt, "level": level})


@pytest.mark.usefixtures("restore_root")
def test_json_lines_carry_ts_level_logger_msg_and_extra_fields() -> None:
    out = io.StringIO()
    setup_logging(log_config("json"), stream=out)
    logging.getLogger("syncd.test").warning("mode %s -> %s", "push", "fallback", extra={"reason": "silence"})
    line = json.loads(out.getvalue().strip())
    assert line["level"] == "WARNING"
    assert line["logger"] == "syncd.test"
    assert line["msg"] == "mode push -> fallback"
    assert line["reason"] == "silence"
    assert line["ts"].startswith("20")


@pytest.mark.usefixtures("restore_root")
def test_text_format_and_level() -> None:
    out = io.StringIO()
    setup_logging(log_config("text", "warning"), stream=out)
    logging.getLogger("syncd.test").info("hidden")
    logging.getLogger("syncd.test").error("shown %d", 1)
    text = out.getvalue()
    assert "hidden" not in text
    assert "ERROR syncd.test: shown 1" in text


@pytest.mark.usefixtures("restore_root")
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_are_redacted_everywhere(fmt: str) -> None:
    out = io.StringIO()
    redactor = setup_logging(log_config(fmt), secrets=["whsec_s3cret", "api-key-123"], stream=out)
    log = logging.getLogger("syncd.test")
    log.info(
        "key %s rejected",
        "api-key-123",
        extra={"header": "Bearer api-key-123", "nested": {"s": "whsec_s3cret"}},
    )
    try:
        raise ValueError("bad signature with whsec_s3cret")
    except ValueError:
        log.exception("verification failed")
    redactor.set_secrets(["rotated-secret"])
    log.info("now rotated-secret and whsec_s3cret")
    text = out.getvalue()
    assert "api-key-123" not in text
    assert "rotated-secret" not in text
    assert text.count(REDACTED) >= 4
    # After a reload only the current secrets are redacted.
    assert "whsec_s3cret" in text.splitlines()[-1]


@pytest.mark.usefixtures("restore_root")
def test_setup_twice_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging(log_config("text"), stream=first)
    setup_logging(log_config("json"), stream=second)
    logging.getLogger("syncd.test").info("once")
    assert first.getvalue() == ""
    assert json.loads(second.getvalue())["msg"] == "once"
