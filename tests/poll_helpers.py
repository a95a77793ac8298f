"""Shared pieces of the pull-path tests: configs pointing at a simulator, mirror snapshots."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import httpx

from syncd.config import Config
from syncd.config_secrets import Secrets
from syncd.sim.server import SimHandle
from syncd.store.db import Store

RESOURCES = ("orders", "customers", "inventory")


def make_config(
    base_url: str,
    store_path: Path,
    *,
    lookback: str = "1s",
    page_size: int = 50,
    api_key: str = "test-key",
    timeout: str = "5s",
    visibility_lag: str = "10s",
) -> Config:
    cfg = Config.model_validate(
        {
            "api": {
                "base_url": base_url,
                "timeout": timeout,
                "connect_timeout": "2s",
                "visibility_lag": visibility_lag,
            },
            "store": {"path": str(store_path)},
            "sync": {"mode": "poll"},
            "poll": {"interval": "1s", "lookback": lookback, "page_size": page_size, "jitter": "0s"},
        }
    )
    return cfg.model_copy(update={"secrets": Secrets(api_key, ())})


def write_config_file(path: Path, base_url: str, store_path: Path, *, page_size: int = 500) -> Path:
    path.write_text(
        f'[api]\nbase_url = "{base_url}"\napi_key_env = "SYNCD_TEST_API_KEY"\ntimeout = "5s"\n'
        f'[store]\npath = "{store_path}"\n'
        '[sync]\nmode = "poll"\n'
        f'[poll]\nlookback = "1s"\npage_size = {page_size}\n',
        encoding="utf-8",
    )
    return path


def mirror_versions(store_path: Path, resource: str, *, deleted: bool = False) -> dict[str, int]:
    """id (as the simulator's ground truth spells it) -> version, of live or tombstoned rows."""
    conn = Store.open_reader(store_path)
    try:
        rows = conn.execute(
            f"SELECT id, _version FROM {resource} WHERE _deleted = ?", (1 if deleted else 0,)
        ).fetchall()
    finally:
        conn.close()
    return {str(rid): version for rid, version in rows}


def drift(sim: SimHandle, store_path: Path, resources: tuple[str, ...] = RESOURCES) -> dict[str, Any]:
    """Ground truth (the simulator's /_sim/state) vs. mirror: ids missing or at another
    version, and extra live ids."""
    truth = httpx.get(f"{sim.base_url}/_sim/state", timeout=10).json()
    out: dict[str, Any] = {}
    for resource in resources:
        mirror = mirror_versions(store_path, resource)
        want = truth[resource]
        out[resource] = {
            "wrong": sorted(rid for rid, v in want.items() if mirror.get(rid) != v),
            "extra": sorted(set(mirror) - set(want)),
        }
    return out


def cursor_of(store_path: Path, resource: str) -> str | None:
    conn = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT cursor FROM _cursors WHERE resource = ?", (resource,)).fetchone()
    finally:
        conn.close()
    return None if row is None else row[0]
