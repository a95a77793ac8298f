"""From `[[sinks]]` to running sinks: a real exec sink's command sees a reduced environment
(never the API key or the webhook secret), a real http sink signs with the secret the config
resolved, and the runner takes its settings from the config."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from syncd.config import Config, load_config
from syncd.config_feed import ExecSinkConfig, HttpSinkConfig
from syncd.core.changes import Change, ChangeKind, ChangeSource, new_change
from syncd.errors import ConfigError
from syncd.feed.build import PASSED_ENV, build_sink, runner_options, sink_environment, sink_warnings
from syncd.feed.command import CommandSink
from syncd.feed.http import HttpSink
from syncd.feed.log import ConnectionChangeLog
from syncd.feed.notifier import ChangeNotifier
from syncd.feed.runner import OnFailure, SinkRunner, Start
from syncd.store import changelog

from .support import MIRROR, SECRET, FakeClock, Receiver, append_orders

API_KEY = "sk_live_must_not_leak_4f9a"
HOOK_SECRET = "petstore-hook-secret-must-not-leak"


def load(tmp_path: Path, text: str, **env: str) -> Config:
    path = tmp_path / "syncd.toml"
    path.write_text(text)
    return load_config(path, env={"PETSTORE_API_KEY": API_KEY, "PETSTORE_WEBHOOK_SECRET": HOOK_SECRET, **env})


def one_change(seq: int = 1) -> Change:
    return new_change(
        mirror=MIRROR,
        resource="orders",
        record_id=seq,
        kind=ChangeKind.CREATED,
        source=ChangeSource.POLL,
        data={"id": seq, "status": "placed", "version": 1},
        version=1,
        previous=None,
        previous_version=None,
        at="2026-12-01T10:00:00.000Z",
    ).with_seq(seq)


def dumped_environment(path: Path) -> dict[str, str]:
    # `env` prints one NAME=value per line; none of the values set here spans lines.
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


async def test_an_exec_sink_sees_a_reduced_environment_and_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "env.txt"
    cfg = load(
        tmp_path,
        f"""
[[sinks]]
name = "script"
type = "exec"
command = ["sh", "-c", 'env > "$DUMP_TO"']
env = {{ DUMP_TO = "{out}", SHOP_DB = "postgresql:///shop" }}
""",
    )
    # What syncd's own environment holds when it runs: the secrets its config names, and
    # whatever else the service manager or shell put there.
    monkeypatch.setenv("PETSTORE_API_KEY", API_KEY)
    monkeypatch.setenv("PETSTORE_WEBHOOK_SECRET", HOOK_SECRET)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unrelated-secret")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("TZ", "UTC")
    sink = build_sink(cfg.sinks[0], cfg.secrets)
    assert isinstance(sink, CommandSink)
    await sink.deliver([one_change()])

    seen = dumped_environment(out)
    text = out.read_text()
    for leaked in (API_KEY, HOOK_SECRET, "unrelated-secret"):
        assert leaked not in text
    assert "PETSTORE_API_KEY" not in seen
    assert "PETSTORE_WEBHOOK_SECRET" not in seen
    assert seen["SYNCD_SINK"] == "script"
    assert seen["SHOP_DB"] == "postgresql:///shop"
    assert seen["DUMP_TO"] == str(out)
    assert seen["PATH"] == os.environ["PATH"]
    assert seen["LC_ALL"] == "C.UTF-8"
    assert seen["TZ"] == "UTC"
    # Anything else is what sh itself sets.
    passed = set(PASSED_ENV) | {"SYNCD_SINK", "DUMP_TO", "SHOP_DB"}
    extra = {name for name in seen if name not in passed and not name.startswith("LC_")}
    assert extra <= {"PWD", "SHLVL", "_", "OLDPWD"}


def test_the_environment_passes_only_the_listed_variables() -> None:
    sink = ExecSinkConfig(name="s", command=("true",), env={"HOME": "/srv/handler", "X": "1"})
    environ = {
        "PATH": "/usr/bin",
        "HOME": "/var/lib/syncd",
        "LANG": "en_GB.UTF-8",
        "LC_CTYPE": "C.UTF-8",
        "LOGNAME": "syncd",
        "CREDENTIALS_DIRECTORY": "/run/credentials/syncd.service",
        "PETSTORE_API_KEY": API_KEY,
        "SYNCD_CONFIG": "/etc/syncd/config.toml",
        "PATHEXT": "not PATH",
    }
    assert sink_environment(sink, environ) == {
        "PATH": "/usr/bin",
        "HOME": "/srv/handler",  # the sink's own table comes last
        "LANG": "en_GB.UTF-8",
        "LC_CTYPE": "C.UTF-8",
        "LOGNAME": "syncd",
        "SYNCD_SINK": "s",
        "X": "1",
    }


async def test_an_http_sink_signs_with_the_resolved_secret(
    tmp_path: Path, db: tuple[sqlite3.Connection, ConnectionChangeLog], receiver: Receiver
) -> None:
    conn, log = db
    cfg = load(
        tmp_path,
        f"""
[[sinks]]
name = "app"
type = "http"
url = "{receiver.url}"
secret_env = "APP_SINK_SECRET"
events = ["order.*"]
timeout = "2s"
on_failure = "skip"
max_attempts = 3
batch_size = 2
start = "beginning"
""",
        APP_SINK_SECRET=SECRET,
    )
    append_orders(conn, range(1, 6))
    clock = FakeClock()
    sink = build_sink(cfg.sinks[0], cfg.secrets)
    assert isinstance(sink, HttpSink)
    assert sink.timeout == 2.0
    async with sink:
        runner = SinkRunner(
            sink, log, ChangeNotifier(), sleep=clock.sleep, clock=clock.time, **runner_options(cfg.sinks[0])
        )
        task = asyncio.create_task(runner.run())
        try:
            # The offset is committed after the receiver answered: wait for both.
            await receiver.until(lambda: len(receiver.delivered) == 5 and changelog.offset(conn, "app") == 5)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    # The receiver verifies each request with the standardwebhooks package and SECRET.
    assert [r.seq for r in receiver.requests] == [1, 2, 3, 4, 5]
    assert all(r.verified for r in receiver.requests)
    assert all(r.webhook_id == f"{MIRROR}-{r.seq}" for r in receiver.requests)
    assert changelog.offset(conn, "app") == 5


def test_runner_options_are_the_config_as_the_runner_takes_it() -> None:
    sink = HttpSinkConfig(
        name="app",
        url="http://127.0.0.1:9/",
        secret_env="S",
        events=("order.*", "*.deleted"),
        on_failure="skip",
        max_attempts=7,
        batch_size=3,
        start="beginning",
    )
    options = runner_options(sink)
    assert options == {
        "events": ("order.*", "*.deleted"),
        "on_failure": OnFailure.SKIP,
        "max_attempts": 7,
        "batch_size": 3,
        "start": Start.BEGINNING,
    }
    assert runner_options(ExecSinkConfig(name="s", command=("true",)))["start"] is Start.HEAD


async def test_http_sinks_can_share_a_client(tmp_path: Path) -> None:
    secret_file = tmp_path / "b-secret"
    secret_file.write_text(SECRET + "\n")
    cfg = load(
        tmp_path,
        f"""
[[sinks]]
name = "a"
type = "http"
url = "http://127.0.0.1:9/a"
secret_env = "A_SECRET"
[[sinks]]
name = "b"
type = "http"
url = "http://127.0.0.1:9/b/"
secret_file = "{secret_file}"
""",
        A_SECRET=SECRET,
    )
    assert cfg.secrets.sink_secrets == {"a": SECRET, "b": SECRET}
    async with aiohttp.ClientSession() as client:
        a, b = (build_sink(sink, cfg.secrets, client=client) for sink in cfg.sinks)
        assert isinstance(a, HttpSink)
        assert isinstance(b, HttpSink)
        # The URL is used as written: a trailing slash can be part of the receiver's route.
        assert (a.url, b.url) == ("http://127.0.0.1:9/a", "http://127.0.0.1:9/b/")
        await a.aclose()
        assert not client.closed  # the client is the caller's to close


def test_an_http_sink_without_its_secret_is_not_built(tmp_path: Path) -> None:
    path = tmp_path / "syncd.toml"
    path.write_text(
        '[[sinks]]\nname = "app"\ntype = "http"\nurl = "http://127.0.0.1:9/"\nsecret_env = "UNSET"\n'
    )
    cfg = load_config(path, env={}, require_secrets=False)
    assert cfg.secrets.sink_secrets == {}
    with pytest.raises(ConfigError, match="sink 'app': secret_env: no secret was resolved"):
        build_sink(cfg.sinks[0], cfg.secrets)


# -- warnings ----------------------------------------------------------------------------


def warnings_for(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "syncd.toml"
    path.write_text(text)
    return sink_warnings(load_config(path, env={}, require_secrets=False))


def exec_sink(events: str, name: str = "s") -> str:
    return f'[[sinks]]\nname = "{name}"\ntype = "exec"\ncommand = ["true"]\nevents = {events}\n'


@pytest.mark.parametrize(
    "events",
    ['["*"]', '["order.*"]', '["*.deleted", "inventory.low"]', '["customer.registered"]', '["order.[sc]*"]'],
)
def test_patterns_that_match_events_warn_of_nothing(tmp_path: Path, events: str) -> None:
    assert warnings_for(tmp_path, exec_sink(events)) == []


def test_no_sinks_no_warnings() -> None:
    assert sink_warnings(Config()) == []
    assert sink_warnings(Config(changes={"enabled": False})) == []  # type: ignore[arg-type]


def test_a_sink_whose_patterns_match_nothing_is_warned_about(tmp_path: Path) -> None:
    text = exec_sink('["*"]', name="ok") + exec_sink('["orders.*", "Order.created"]', name="typo")
    [warning] = warnings_for(tmp_path, text)
    assert warning.startswith("sinks.1.events: no event syncd emits matches 'orders.*', 'Order.created'")
    assert "sink 'typo' receives nothing" in warning


def test_one_pattern_that_matches_nothing_is_warned_about(tmp_path: Path) -> None:
    [warning] = warnings_for(tmp_path, exec_sink('["order.*", "customer.removed"]'))
    assert warning == "sinks.0.events: no event syncd emits matches 'customer.removed' (a typo?)"


def test_a_sink_for_resources_not_mirrored_is_warned_about(tmp_path: Path) -> None:
    text = '[sync]\nresources = ["orders"]\n' + exec_sink('["inventory.low", "customer.*"]')
    [warning] = warnings_for(tmp_path, text)
    assert (
        "sinks.0.events: sink 's' matches only events of resources not in sync.resources (orders)" in warning
    )


def test_sinks_without_a_change_log_are_warned_about(tmp_path: Path) -> None:
    text = "[changes]\nenabled = false\n" + exec_sink('["*"]')
    [warning] = warnings_for(tmp_path, text)
    assert warning.startswith("changes.enabled is false")
