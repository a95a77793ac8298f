"""`syncd browse`: Datasette on the mirror, read-only, described by syncd.ops.browse.

Datasette is an optional extra (`pip install 'syncd[browse]'`). The file is opened with
SQLite's `mode=ro`, not `immutable=1`: immutable would let SQLite skip the WAL and show a
mirror that a running daemon has already moved past, so browsing is live and still never
writes.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import click

from syncd.cli.common import EXIT_FAILURE, config_option, load
from syncd.ops.browse import datasette_metadata
from syncd.store.db import Store


@click.command("browse")
@config_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on; keep it loopback.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8001, show_default=True, help="0 picks a free port."
)
@click.option("--open", "open_browser", is_flag=True, help="Open it in the default web browser.")
def browse(config_path: str | None, host: str, port: int, open_browser: bool) -> None:
    """Browse the mirror in Datasette: tables described, bookkeeping hidden, canned queries.

    Needs the browse extra: pip install 'syncd[browse]'. Read-only, and safe while the
    daemon runs. Stop it with Ctrl-C.
    """
    cfg = load(config_path, require_secrets=False)
    try:
        from datasette.cli import cli as datasette_cli
    except ImportError:
        click.echo("syncd: error: syncd browse needs Datasette: pip install 'syncd[browse]'", err=True)
        sys.exit(EXIT_FAILURE)
    conn = Store.open_reader(cfg.store.path)
    try:
        metadata = datasette_metadata(conn, cfg.store.path)
    finally:
        conn.close()
    with tempfile.TemporaryDirectory(prefix="syncd-browse-") as scratch:
        metadata_path = Path(scratch) / "metadata.json"
        metadata_path.write_text(json.dumps(metadata, indent=2))
        args = [
            "serve",
            cfg.store.path,
            "--metadata",
            str(metadata_path),
            "--host",
            host,
            "--port",
            str(port),
            # A slow ad-hoc query is cut off rather than holding a read transaction (and so
            # the WAL's checkpoint) open for long.
            "--setting",
            "sql_time_limit_ms",
            "3000",
            "--setting",
            "default_page_size",
            "50",
            *(["--open"] if open_browser else []),
        ]
        datasette_cli.main(args=args, prog_name="syncd browse", standalone_mode=True)


commands = [browse]
