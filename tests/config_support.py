"""What the config tests share about `[[sinks]]`: a valid table of each type to vary one key
of, the keys of each type, and the secret an http sink signs with."""

from __future__ import annotations

import base64
import json
from typing import Final

from pydantic import BaseModel

from syncd.config_feed import ExecSinkConfig, HttpSinkConfig, NatsSinkConfig

SINK_SECRET_ENV: Final = "SYNCD_TEST_SINK_SECRET"
SINK_SECRET: Final = "whsec_" + base64.b64encode(b"config-test-sink-secret-32bytes!").decode()

SINK_MODELS: Final[dict[str, type[BaseModel]]] = {
    "http": HttpSinkConfig,
    "exec": ExecSinkConfig,
    "nats": NatsSinkConfig,
}

#: The smallest valid table of each type.
SINK_BASE: Final[dict[str, dict[str, object]]] = {
    "http": {
        "name": "app",
        "type": "http",
        "url": "http://127.0.0.1:9000/hook",
        "secret_env": SINK_SECRET_ENV,
    },
    "exec": {"name": "script", "type": "exec", "command": ["/bin/true"]},
    "nats": {"name": "bus", "type": "nats"},
}


def sink_keys() -> set[str]:
    """`sinks.<type>.<key>` for every key of every sink type."""
    return {f"sinks.{kind}.{key}" for kind, model in SINK_MODELS.items() for key in model.model_fields}


def sink_table(kind: str, key: str | None = None, rendered: str | None = None) -> str:
    """One `[[sinks]]` table of `kind`, with `key` set to the TOML text `rendered` (or
    removed when `rendered` is None)."""
    lines = ["[[sinks]]"]
    for name, value in SINK_BASE[kind].items():
        if name != key:
            lines.append(f"{name} = {json.dumps(value)}")
    if key is not None and rendered is not None:
        lines.append(f"{key} = {rendered}")
    return "\n".join(lines) + "\n"


def config_text(key: str, rendered: str) -> tuple[str, str]:
    """A config file that sets `key` to the TOML text `rendered`, and the key as errors name
    it: `poll.interval` is itself; `sinks.http.timeout` is set in an http sink's table and
    named `sinks.0.timeout`."""
    parts = key.split(".")
    if parts[0] == "sinks":
        return sink_table(parts[1], parts[2], rendered), f"sinks.0.{parts[2]}"
    return f"[{parts[0]}]\n{parts[1]} = {rendered}\n", key
