"""Logging setup: one line per notable event, as text or JSON, never a secret.

`log.format = "json"` writes one object per line with ts, level, logger, msg and whatever
`extra=` fields the call passed (python-json-logger does the encoding). Every record passes a
`SecretRedactor` first, which replaces configured secret values wherever they appear (the
message, its arguments, extra fields, a traceback), so a secret that leaks into an error
message from a library still never reaches the journal. Then every non-printable character
in the message and in extra fields (line breaks, ESC, other control and format characters) is
written as its Python escape, so a value a client chose (a request path, a header) can neither
forge a log line nor drive the terminal that shows the log. Tracebacks are left as they are.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import IO, Any

from pythonjsonlogger.json import JsonFormatter

from syncd.config import LogConfig

REDACTED = "<redacted>"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
#: Secrets shorter than this are not redacted: replacing "a" or "1" everywhere would make
#: logs unreadable and such a value is not a secret worth the name.
MIN_SECRET_LENGTH = 4
_HANDLER_NAME = "syncd"


def escape_unprintable(text: str) -> str:
    """`text` with each non-printable character as its escape (repr's: \\n, \\x1b, \\u202e)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class UnprintableEscaper(logging.Filter):
    """Escapes non-printable characters in a record's message and extra string fields."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        escaped = escape_unprintable(message)
        if escaped is not message or record.args:
            record.msg = escaped
            record.args = None
        for key, value in list(record.__dict__.items()):
            if key not in _RECORD_ATTRS and isinstance(value, str):
                record.__dict__[key] = escape_unprintable(value)
        return True


class SecretRedactor(logging.Filter):
    """Replaces configured secret values in everything a record will print."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets: tuple[str, ...] = ()
        self.set_secrets(secrets)

    def set_secrets(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        unique = {s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}
        self._secrets = tuple(sorted(unique, key=len, reverse=True))

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        record.msg = self.redact(record.getMessage())
        record.args = None
        if record.exc_info:
            # Render the traceback now, redacted; formatters then use exc_text as it is.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key not in _RECORD_ATTRS:
                record.__dict__[key] = self._redact_value(value)
        return True

    def _redact_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {k: self._redact_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self._redact_value(v) for v in value)
        return value


def make_formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger", "message": "msg"},
            timestamp="ts",
        )
    if fmt == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"unknown log format {fmt!r}; valid: text, json")


def setup_logging(
    cfg: LogConfig, *, secrets: Iterable[str] = (), stream: IO[str] | None = None
) -> SecretRedactor:
    """Route every logger (syncd, uvicorn, apscheduler, httpx) through one handler on the root
    logger with the configured level and format. Calling it again (a reload) replaces the
    handler set up before. Returns the redactor, whose secrets a reload can update."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
            handler.close()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    redactor = SecretRedactor(secrets)
    handler.addFilter(redactor)
    handler.addFilter(UnprintableEscaper())
    handler.setFormatter(make_formatter(cfg.format))
    root.addHandler(handler)
    set_level(cfg.level)
    # uvicorn configures its own loggers unless told not to; the daemon passes log_config=None
    # and lets them propagate here. Per-request lines would drown the events that matter
    # (the receiver keeps an audit table instead).
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # httpx logs every request at INFO.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return redactor


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())
    # apscheduler logs each job run at INFO and every coalesced or skipped run (which the
    # scheduler's max_instances=1 and coalesce make routine) at WARNING.
    logging.getLogger("apscheduler").setLevel(logging.DEBUG if level == "debug" else logging.ERROR)
