"""`syncd status` for people: everything `--json` has that an operator reads first, in 80
columns. Times are relative ("12 s ago"), ids shortened, long texts (reasons, errors) wrap
under their table instead of widening it; colour marks what needs a look, on a terminal
only (syncd.cli.terminal)."""

from __future__ import annotations

import time
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from syncd.cli.terminal import ago, count, duration, plain, short
from syncd.config_values import format_size

_MODE_STYLE = {"push": "green", "poll": "green", "fallback": "yellow"}


def _table(title: str) -> Table:
    return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, expand=False)


def render(report: dict[str, Any], out: Console, *, now: float | None = None) -> None:
    now = time.time() if now is None else now
    _overview(report, out, now)
    _resources(report, out, now)
    _dead_letters(report, out)
    _feed(report, out, now)


def _overview(report: dict[str, Any], out: Console, now: float) -> None:
    mode, daemon, dead = report["mode"], report["daemon"], report["dead_letters"]
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    if daemon["running"]:
        running = Text(f"running (pid {daemon['pid']}), heartbeat {ago(daemon['heartbeat_at'], now)}")
    else:
        running = Text(f"not running, last heartbeat {ago(daemon['heartbeat_at'], now)}", style="yellow")
    grid.add_row("daemon", running)
    current = mode["current"]
    shown = Text(plain(current), style=_MODE_STYLE.get(current or "", "yellow"))
    shown.append(f" (configured: {report['configured_mode']})", style="default")
    if mode["since"] is not None:
        shown.append(f", since {ago(mode['since'], now)}", style="default")
    grid.add_row("mode", shown)
    grid.add_row("why", Text(plain(mode["reason"])))
    grid.add_row("fallback switches", str(report["fallback_switches"]))
    grid.add_row("last webhook", ago(report["last_webhook_at"], now))
    backlog = report["inbox_backlog"]
    depth = Text(f"{count(backlog['deliveries'])} ({format_size(backlog['bytes'])})")
    if backlog["full"]:
        depth.append(" FULL: new deliveries get 503", style="bold red")
    grid.add_row("inbox depth", depth)
    letters = Text(f"{count(dead['total'])} ({count(dead['open'])} open)")
    if dead["open"]:
        letters.stylize("yellow")
    grid.add_row("dead letters", letters)
    events = ", ".join(f"{outcome} {count(n)}" for outcome, n in sorted(report["events"].items()))
    grid.add_row("webhook events", events or "none yet")
    out.print(Text(f"syncd status  {report['store']}", style="bold"), overflow="fold")
    out.print(grid)


def _resources(report: dict[str, Any], out: Console, now: float) -> None:
    table = _table("resources")
    table.add_column("resource", no_wrap=True)
    table.add_column("lag", justify="right", no_wrap=True)
    table.add_column("last poll", no_wrap=True)
    table.add_column("outcome", overflow="fold")
    table.add_column("live", justify="right", no_wrap=True)
    table.add_column("tombstoned", justify="right", no_wrap=True)
    notes: list[Text] = []
    for name, r in report["resources"].items():
        if r["last_error"] is not None:
            outcome = Text(f"error {ago(r['last_error_at'], now)}", style="red")
            notes.append(Text(f"{name}: {plain(r['last_error'])}", style="red"))
        elif r["last_success_at"] is not None:
            outcome = Text(f"ok, {count(r['last_changes'])} written")
        else:
            outcome = Text("not polled yet", style="yellow")
        for note in (r["cursor_problem"], r["relist_held_back"]):
            if note is not None:
                notes.append(Text(f"{name}: {plain(note)}", style="yellow"))
        table.add_row(
            name,
            "-" if r["lag_seconds"] is None else duration(r["lag_seconds"]),
            ago(r["last_poll_at"], now),
            outcome,
            count(r["live"]),
            count(r["tombstoned"]),
        )
    out.print(table)
    for note in notes:
        out.print(note, overflow="fold")


def _dead_letters(report: dict[str, Any], out: Console) -> None:
    latest = report["dead_letters"]["latest"]
    if not latest:
        return
    table = _table("open dead letters, latest first (`syncd replay --all` re-drives them)")
    for column in ("id", "from", "resource", "record", "event"):
        table.add_column(column, no_wrap=True)
    table.add_column("reason", overflow="fold")
    for d in latest:
        table.add_row(
            str(d["id"]),
            plain(d["source"]),
            plain(d["resource"]),
            short(d["record_id"]),
            short(d["event_id"]),
            Text(plain(d["reason"])),
        )
    out.print(table)


def _feed(report: dict[str, Any], out: Console, now: float) -> None:
    log = report["changes"]
    line = f"change log: head seq {log['head_seq']}, oldest {plain(log['oldest_seq'])}, {count(log['entries'])} entries"
    if not log["enabled"]:
        line += " (changes.enabled = false: nothing new is logged)"
    out.print(Text(line), overflow="fold")
    if not report["sinks"]:
        return
    stale = any(s["state_stale"] for s in report["sinks"].values())
    table = _table("sinks" + (" (daemon not running: states as it left them)" if stale else ""))
    table.add_column("sink", no_wrap=True)
    table.add_column("type", no_wrap=True)
    table.add_column("delivered", justify="right", no_wrap=True)
    table.add_column("lag", justify="right", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("tries", justify="right", no_wrap=True)
    table.add_column("dead", justify="right", no_wrap=True)
    errors: list[Text] = []
    for name, s in report["sinks"].items():
        state = Text(plain(s["state"]) if s["configured"] else "not configured")
        if s["state"] in ("retrying", "blocked"):
            state.stylize("yellow" if s["state"] == "retrying" else "red")
        if s["last_error"] is not None:
            # A receiver's error text is not ours: never read it as markup.
            errors.append(
                Text(f"{name}: {plain(s['last_error'])} ({ago(s['last_error_at'], now)})", style="red")
            )
        table.add_row(
            short(name),
            plain(s["type"]),
            plain(s["delivered_seq"]),
            plain(s["lag"]),
            state,
            str(s["attempts"]),
            str(s["dead_letters"]),
        )
    out.print(table)
    for error in errors:
        out.print(error, overflow="fold")
