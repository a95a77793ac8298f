"""What the change feed's CLI tests share: a config file naming a store in tmp_path (and
sinks), a real store whose changes are written through the real apply path, and running
`syncd` as a real process."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from click.testing import CliRunner, Result

from syncd.cli import main
from syncd.core.records import Change as RecordChange
from syncd.store.apply import apply_batch
from syncd.store.db import Store

SYNCED: Final = "2026-12-01T10:00:00.123Z"
SINK_SECRET_ENV: Final = "SYNCD_CLI_TEST_SINK_SECRET"
SINK_SECRET: Final = "whsec_" + base64.b64encode(b"cli-test-sink-secret-32-bytes!!!").decode()
REPO: Final = Path(__file__).resolve().parents[2]


def write_config(tmp_path: Path, sinks: Sequence[Mapping[str, Any]] = ()) -> Path:
    """A poll-mode config whose store is tmp_path/mirror.db, with `sinks` as [[sinks]]."""
    lines = ["[store]", f"path = {json.dumps(str(tmp_path / 'mirror.db'))}", "[sync]", 'mode = "poll"']
    for sink in sinks:
        lines.append("[[sinks]]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in sink.items())
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def http_sink(name: str = "app", url: str = "http://127.0.0.1:9/hook", **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "http", "url": url, "secret_env": SINK_SECRET_ENV, **extra}


def order(rid: int, version: int, status: str = "placed") -> RecordChange:
    data = {
        "id": rid,
        "status": status,
        "version": version,
        "updatedAt": f"2026-12-01T09:00:{version:02d}.000Z",
    }
    return RecordChange("orders", rid, version, str(data["updatedAt"]), data, "poll")


def customer(cid: str, version: int, name: str = "Ada") -> RecordChange:
    data = {"id": cid, "email": f"{cid}@example.com", "name": name, "version": version}
    return RecordChange("customers", cid, version, "2026-12-01T09:00:00.000Z", data, "webhook")


def store_path(tmp_path: Path) -> Path:
    return tmp_path / "mirror.db"


@contextmanager
def open_store(tmp_path: Path) -> Iterator[Store]:
    store = Store(store_path(tmp_path))
    try:
        yield store
    finally:
        store.close()


def write(tmp_path: Path, changes: Sequence[RecordChange]) -> None:
    """Apply `changes` to the store in tmp_path, one batch (one transaction)."""
    with open_store(tmp_path) as store:
        apply_batch(store, list(changes), synced_at=SYNCED)


def invoke(config: Path, *args: str, env: Mapping[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, [*args, "--config", str(config)], env=dict(env or {}))


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def syncd_process(
    config: Path, *args: str, stdout: Any = subprocess.PIPE, **kwargs: Any
) -> subprocess.Popen[bytes]:
    """`python -m syncd ARGS --config CONFIG` as a real process, from the repository."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SYNCD_CONFIG", None)
    return subprocess.Popen(
        [sys.executable, "-m", "syncd", *args, "--config", str(config)],
        cwd=REPO,
        env=env,
        stdout=stdout,
        stderr=subprocess.PIPE,
        **kwargs,
    )
