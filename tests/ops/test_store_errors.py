"""`syncd status` and `syncd verify` on a store they cannot use: one line and exit 1, never a
raw sqlite3 traceback; the store is left as it was."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from syncd.cli import main
from syncd.store.db import Store


def corrupt(db: Path) -> None:
    db.write_bytes(b"this is not a database\n" * 512)


def truncated(db: Path) -> None:
    """A real store cut short: the header is fine, the pages it points at are gone."""
    store = Store(db)
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    data = db.read_bytes()
    db.write_bytes(data[:100] + b"\x00" * (len(data) - 100))


def newer(db: Path) -> None:
    Store(db).close()
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE _meta SET value='999' WHERE key='schema_version'")
    conn.close()


BROKEN = {"corrupt": corrupt, "truncated": truncated, "newer": newer}
NEEDLES = {"corrupt": "cannot read store", "truncated": "cannot read store", "newer": "newer than this syncd"}


def invoke(tmp_path: Path, command: str, db: Path, monkeypatch: pytest.MonkeyPatch) -> Result:
    monkeypatch.setenv("PETSTORE_API_KEY", "k")
    monkeypatch.setenv("PETSTORE_WEBHOOK_SECRET", "s")
    config = tmp_path / "syncd.toml"
    # verify never reaches the API: the store is read first.
    config.write_text(f'[api]\nbase_url = "http://127.0.0.1:9"\n[store]\npath = "{db}"\n')
    return CliRunner().invoke(main, [command, "--config", str(config)])


@pytest.mark.parametrize("command", ["status", "verify"])
@pytest.mark.parametrize("kind", list(BROKEN))
def test_an_unusable_store_gives_one_line_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, kind: str
) -> None:
    db = tmp_path / "mirror.db"
    BROKEN[kind](db)
    before = db.read_bytes()
    result = invoke(tmp_path, command, db, monkeypatch)
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.output.startswith("syncd: error: "), result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert NEEDLES[kind] in result.output
    assert db.read_bytes() == before


def test_a_good_store_still_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "mirror.db"
    Store(db).close()
    result = invoke(tmp_path, "status", db, monkeypatch)
    assert result.exit_code == 0, result.output
