"""`syncd status` for people: 80 columns, relative times, shortened ids (whole in --json),
colour only on a terminal and never with NO_COLOR; and shell completion."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from syncd.cli import main, status_view
from syncd.cli.terminal import ago, duration, short
from syncd.ops.status import collect_status
from syncd.store.db import Store
from syncd.store.dead_letters import add_dead_letter
from syncd.timefmt import format_epoch
from tests.ops.test_status import NOW, config, populate, write_config

LONG_EVENT = "evt_01HQZX3M8K0123456789ABCDEFGHJKMNPQRS"
LONG_REASON = "payload failed validation: " + "field 'items[0].unitPrice' is not a number; " * 4
#: SGR codes that set a colour (foreground 30-37, 90-97, 38;...; background alike).
COLOUR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-8]|9[0-7]|4[0-8]|10[0-7])[0-9;]*m")


def _store(tmp_path: Path) -> Path:
    path = write_config(tmp_path)
    store = Store(tmp_path / "mirror.db")
    populate(store)
    add_dead_letter(store.conn, LONG_EVENT, "order.created", NOW - 5, LONG_REASON, b"{}")
    store.conn.commit()
    store.close()
    return path


def _render(tmp_path: Path, width: int = 80) -> str:
    _store(tmp_path)
    report = collect_status(config(tmp_path), now=NOW)
    out = io.StringIO()
    status_view.render(report, Console(file=out, width=width, color_system=None), now=NOW)
    return out.getvalue()


def test_it_fits_80_columns_and_keeps_long_texts_whole(tmp_path: Path) -> None:
    text = _render(tmp_path)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80, "\n".join(line for line in lines if len(line) > 80)
    for resource in ("orders", "customers", "inventory"):
        assert any(line.split()[:1] == [resource] for line in lines), resource
    # A reason wraps inside its column rather than being cut: every word is there.
    reason_words = " ".join(text.split())
    assert "field 'items[0].unitPrice' is not a number;" in reason_words
    assert reason_words.count("unitPrice") == 4
    # The resource's error is in full under the table.
    assert "customers: poll: 503 upstream" in text


def test_times_are_relative(tmp_path: Path) -> None:
    text = _render(tmp_path)
    orders = next(line.split() for line in text.splitlines() if line.split()[:1] == ["orders"])
    # lag 30 s, last poll 2 s ago, ok with 4 written, 1 live, 1 tombstoned
    assert orders == ["orders", "30", "s", "2", "s", "ago", "ok,", "4", "written", "1", "1"]
    assert "since 2 min ago" in text  # the mode switched 100 s before
    assert "heartbeat 1 s ago" in text
    assert not re.search(r"\d{4}-\d\d-\d\dT", text)  # no raw timestamps


def test_ids_are_shortened_and_whole_in_json(tmp_path: Path) -> None:
    text = _render(tmp_path)
    assert LONG_EVENT not in text
    assert str(short(LONG_EVENT)) in text
    assert str(short(LONG_EVENT)).endswith("…")
    result = CliRunner().invoke(main, ["status", "--config", str(tmp_path / "syncd.toml"), "--json"])
    assert result.exit_code == 0, result.output
    latest = json.loads(result.output)["dead_letters"]["latest"]
    assert LONG_EVENT in [d["event_id"] for d in latest]
    assert LONG_REASON in [d["reason"] for d in latest]


def test_the_command_at_80_columns(tmp_path: Path) -> None:
    path = _store(tmp_path)
    result = CliRunner(env={"COLUMNS": "80"}).invoke(main, ["status", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80


@pytest.mark.parametrize(
    ("env", "coloured"),
    [
        ({}, False),  # not a terminal (CliRunner's output, a pipe): plain text
        ({"FORCE_COLOR": "1"}, True),  # as on a terminal
        ({"FORCE_COLOR": "1", "NO_COLOR": "1"}, False),
        ({"FORCE_COLOR": "1", "NO_COLOR": ""}, True),  # NO_COLOR counts only when not empty
    ],
)
def test_colour_only_on_a_terminal_and_never_with_no_color(
    tmp_path: Path, env: dict[str, str], coloured: bool
) -> None:
    path = _store(tmp_path)
    result = CliRunner(env={"COLUMNS": "80", "NO_COLOR": None, "FORCE_COLOR": None, **env}).invoke(
        main, ["status", "--config", str(path)]
    )
    assert result.exit_code == 0, result.output
    assert bool(COLOUR.search(result.output)) is coloured
    if not env:
        assert "\x1b" not in result.output


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0, "0 s"),
        (89, "89 s"),
        (90, "2 min"),
        (5399, "90 min"),
        (5400, "2 h"),
        (172_799, "48 h"),
        (172_800, "2 d"),
    ],
)
def test_durations_at_their_unit_bounds(seconds: float, shown: str) -> None:
    assert duration(seconds) == shown


def test_relative_times() -> None:
    assert ago(format_epoch(NOW - 12), NOW) == "12 s ago"
    assert ago(format_epoch(NOW + 5), NOW) == "in 5 s"
    assert ago(format_epoch(NOW), NOW) == "just now"
    assert ago(None, NOW) == "never"
    assert ago("not a time", NOW) == "not a time"


def test_short_ids_and_control_characters() -> None:
    assert str(short("cus_8f3k2")) == "cus_8f3k2"
    assert str(short("x" * 14)) == "x" * 14
    assert str(short("x" * 15)) == "x" * 13 + "…"
    assert str(short("\x1b[2J")) == "\\x1b[2J"


def test_shell_completion_scripts_and_answers() -> None:
    runner = CliRunner()
    for shell, marker in (("bash", "_syncd_completion"), ("zsh", "#compdef syncd"), ("fish", "complete")):
        script = runner.invoke(main, [], prog_name="syncd", env={"_SYNCD_COMPLETE": f"{shell}_source"})
        assert script.exit_code == 0
        assert marker in script.output, shell
    answer = runner.invoke(
        main,
        [],
        prog_name="syncd",
        env={"_SYNCD_COMPLETE": "bash_complete", "COMP_WORDS": "syncd br", "COMP_CWORD": "1"},
    )
    assert answer.output.split() == ["plain,browse"]
