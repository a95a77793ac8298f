"""`syncd replay --sink NAME`: a sink's open dead letters delivered again through the sink the
config describes, to a real HTTP receiver on loopback that verifies the Standard Webhooks
signature; each marked delivered or failed, a failed one tried again by the next run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.store import changelog
from syncd.store.schema import META_MIRROR_ID
from tests.sink_receiver import SinkReceiver

from .feed_support import (
    SINK_SECRET,
    SINK_SECRET_ENV,
    http_sink,
    invoke,
    open_store,
    order,
    write,
    write_config,
)

ENV = {SINK_SECRET_ENV: SINK_SECRET}


class Receiver(SinkReceiver):
    """Answers `statuses.get(seq, 200)` to a verified request, 401 to any other."""

    def __init__(self) -> None:
        self.statuses: dict[int, int] = {}
        super().__init__(SINK_SECRET, lambda seq, ok: self.statuses.get(seq, 200) if ok else 401)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()
    yield state
    state.close()


def dead_letters(tmp_path: Path, sink: str, seqs: list[int]) -> str:
    """Dead letters of `sink` for the logged changes `seqs`; returns the mirror id."""
    with open_store(tmp_path) as store, store.db.atomic():
        for seq in seqs:
            [change] = changelog.read_after(store.conn, seq - 1, 1)
            changelog.add_sink_dead_letter(store.conn, sink, change, "HTTP 503")
        return str(store.get_meta(META_MIRROR_ID))


def outcomes(tmp_path: Path, sink: str) -> list[tuple[int, str | None]]:
    with open_store(tmp_path) as store:
        letters = changelog.sink_dead_letters(store.conn, sink, pending_only=False)
    return [(letter.seq, letter.replay_outcome) for letter in letters]


def test_each_dead_letter_is_delivered_in_order_and_marked(tmp_path: Path, receiver: Receiver) -> None:
    write(tmp_path, [order(rid, 1) for rid in range(1, 6)])
    mirror = dead_letters(tmp_path, "app", [2, 3, 5])
    dead_letters(tmp_path, "other", [1])
    config = write_config(tmp_path, [http_sink("app", receiver.url), http_sink("other", receiver.url)])
    receiver.statuses[3] = 500

    first = invoke(config, "replay", "--sink", "app", env=ENV)
    assert first.exit_code == 1, first.output
    assert [(r.seq, r.verified) for r in receiver.requests] == [(2, True), (3, True), (5, True)]
    assert [r.webhook_id for r in receiver.requests] == [f"{mirror}-2", f"{mirror}-3", f"{mirror}-5"]
    assert "seq 3 order.created: failed (seq 3: HTTP 500)" in first.stdout
    assert "sink app: 2 delivered, 1 failed" in first.stdout
    assert outcomes(tmp_path, "app") == [(2, "delivered"), (3, "failed"), (5, "delivered")]
    assert outcomes(tmp_path, "other") == [(1, None)]
    listed = json.loads(invoke(config, "sinks", "list", "--json").stdout)
    assert [s["dead_letters"] for s in listed["sinks"]] == [1, 1]

    # The receiver is fixed: the next run delivers only what is still open.
    receiver.statuses.clear()
    receiver.requests.clear()
    second = invoke(config, "replay", "--sink", "app", env=ENV)
    assert second.exit_code == 0, second.output
    assert [r.seq for r in receiver.requests] == [3]
    assert "sink app: 1 delivered, 0 failed" in second.stdout
    third = invoke(config, "replay", "--sink", "app", env=ENV)
    assert third.exit_code == 0
    assert "no dead letters to replay" in third.stdout


def test_an_exec_sink_gets_its_dead_letters_on_stdin(tmp_path: Path) -> None:
    write(tmp_path, [order(rid, 1) for rid in range(1, 4)])
    dead_letters(tmp_path, "script", [1, 3])
    out = tmp_path / "handled.jsonl"
    command = ["/bin/sh", "-c", f"cat >> {out}"]
    config = write_config(tmp_path, [{"name": "script", "type": "exec", "command": command}])
    result = invoke(config, "replay", "--sink", "script")
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["seq"] for line in out.read_text().splitlines()] == [1, 3]


def test_sink_and_other_selections_do_not_mix(tmp_path: Path, receiver: Receiver) -> None:
    write(tmp_path, [order(1, 1)])
    config = write_config(tmp_path, [http_sink("app", receiver.url)])
    mixed = invoke(config, "replay", "--sink", "app", "--all", env=ENV)
    assert mixed.exit_code == 2
    unknown = invoke(config, "replay", "--sink", "nope", env=ENV)
    assert unknown.exit_code == 2
    assert "configured: app" in unknown.stderr
    assert receiver.requests == []


def test_an_http_sink_without_its_secret_is_a_config_error(tmp_path: Path, receiver: Receiver) -> None:
    write(tmp_path, [order(1, 1)])
    dead_letters(tmp_path, "app", [1])
    result = invoke(write_config(tmp_path, [http_sink("app", receiver.url)]), "replay", "--sink", "app")
    assert result.exit_code == 2
    assert "no secret" in result.stderr
    assert outcomes(tmp_path, "app") == [(1, None)]
