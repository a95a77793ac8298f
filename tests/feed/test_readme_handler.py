"""The README's Python handler, taken from between its markers and run as written, against
real deliveries of the `http` sink: so the docs' example verifies signatures and handles a
redelivered change once, and stays true as the sink changes. The shell handler is run too,
against `syncd changes`."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import HTTPServer
from pathlib import Path
from typing import Any

import pytest

from syncd.core.changes import Change, ChangeKind, ChangeSource, new_change
from syncd.feed.base import SinkError
from syncd.feed.http import HttpSink

from .support import MIRROR, SECRET

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_block(marker: str, language: str) -> str:
    text = README.read_text()
    found = re.search(
        rf"<!-- {marker}:start -->\s*```{language}\n(.*?)```\s*<!-- {marker}:end -->", text, re.DOTALL
    )
    assert found, f"README.md has no ```{language} block between the {marker} markers"
    return found.group(1)


@pytest.fixture
def handler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The README's handler serving on a free loopback port; yields its URL and the changes
    its `handle()` was called with. The code runs, and serves, on one thread of its own,
    as it would in its own process (its SQLite connection belongs to that thread)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SYNCD_SINK_SECRET", SECRET)
    code = compile(readme_block("readme-handler", "python"), "README.md", "exec")
    handled: list[dict[str, Any]] = []
    ready = threading.Event()
    servers: list[HTTPServer] = []

    def serve() -> None:
        ns: dict[str, Any] = {"__name__": "readme_handler"}
        exec(code, ns)  # noqa: S102 - the README's own code, which is what this test is about
        readme_handle = ns["handle"]

        def handle(change: dict[str, Any]) -> None:
            readme_handle(change)
            handled.append(change)

        ns["handle"] = handle
        server = HTTPServer(("127.0.0.1", 0), ns["Handler"])
        servers.append(server)
        ready.set()
        server.serve_forever()
        server.server_close()
        ns["db"].close()

    thread = threading.Thread(target=serve)
    thread.start()
    assert ready.wait(10)
    yield f"http://127.0.0.1:{servers[0].server_address[1]}/", handled
    servers[0].shutdown()
    thread.join(10)


def shipped(seq: int) -> Change:
    return new_change(
        mirror=MIRROR,
        resource="orders",
        record_id=12345,
        kind=ChangeKind.UPDATED,
        source=ChangeSource.POLL,
        data={"id": 12345, "status": "shipped", "version": 4},
        version=4,
        previous={"id": 12345, "status": "approved", "version": 3},
        previous_version=3,
        at="2026-12-01T10:00:00.123Z",
    ).with_seq(seq)


async def test_the_readme_handler_verifies_and_handles_each_change_once(
    handler: tuple[str, list[dict[str, Any]]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, handled = handler
    async with HttpSink("app", url, SECRET) as sink:
        await sink.deliver([shipped(1), shipped(2)])
        # A redelivery (the same seq, so the same webhook-id) answers 2xx and does nothing.
        await sink.deliver([shipped(2)])
    assert [c["seq"] for c in handled] == [1, 2]
    assert handled[0] == shipped(1).to_dict()
    assert (
        "1 order.shipped 12345 {'status': {'from': 'approved', 'to': 'shipped'}}" in capsys.readouterr().out
    )


async def test_the_readme_handler_refuses_a_wrong_signature(
    handler: tuple[str, list[dict[str, Any]]],
) -> None:
    url, handled = handler
    other = "whsec_" + "c2lnbmVkLWJ5LXNvbWVvbmUtZWxzZS0zMmJ5dGVzIQ=="
    async with HttpSink("app", url, other) as sink:
        with pytest.raises(SinkError, match="HTTP 401"):
            await sink.deliver([shipped(1)])
    assert handled == []


@pytest.mark.skipif(shutil.which("jq") is None, reason="the README's shell handler uses jq")
def test_the_readme_shell_handler_resumes_after_its_last_seq(tmp_path: Path) -> None:
    script = re.search(r"```sh\n(syncd changes --follow.*?)```", README.read_text(), re.DOTALL)
    assert script, "README.md has no shell handler"
    # `syncd` stands in as a script printing two changes, as `syncd changes --json` does;
    # `./ship-order` records what it shipped.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    lines = "\n".join(shipped(seq).to_json().decode() for seq in (5, 6))
    fake = bin_dir / "syncd"
    fake.write_text(f"#!/bin/sh\necho \"$@\" > args\ncat <<'EOF'\n{lines}\nEOF\n")
    fake.chmod(0o755)
    ship = tmp_path / "ship-order"
    ship.write_text('#!/bin/sh\necho "$1" >> shipped\n')
    ship.chmod(0o755)
    (tmp_path / "last-seq").write_text("4\n")
    subprocess.run(
        ["/bin/sh", "-c", script.group(1)],
        cwd=tmp_path,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
        check=True,
        timeout=20,
    )
    assert (tmp_path / "args").read_text().split() == [
        "changes", "--follow", "--json", "--event", "order.shipped", "--since", "4",
    ]  # fmt: skip
    assert (tmp_path / "shipped").read_text().split() == ["12345", "12345"]
    assert (tmp_path / "last-seq").read_text().strip() == "6"
