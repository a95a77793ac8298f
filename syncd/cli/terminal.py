"""How the CLI prints for people: relative times, shortened ids, and a console that colours
only a terminal.

rich already leaves colour out when stdout is not a terminal and honours `NO_COLOR` (and
`FORCE_COLOR`, `TERM=dumb`); the console here adds nothing to that, so a pipe or a log file
gets plain text. The JSON forms keep every value whole: shortening is for eyes only.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.text import Text

from syncd.timefmt import try_epoch

#: Ids longer than this are cut to it, ending in "…" (the full value is in --json).
ID_WIDTH = 14


def console() -> Console:
    # highlight=False: rich would otherwise colour numbers and paths on its own.
    return Console(highlight=False)


def ago(iso: str | None, now: float | None = None) -> str:
    """`12 s ago`, `3 min ago`, `in 5 s`; `never` for None; a value that is no instant as is."""
    if iso is None:
        return "never"
    at = try_epoch(iso)
    if at is None:
        return iso
    delta = (time.time() if now is None else now) - at
    shown = duration(abs(delta))
    if shown == "0 s":
        return "just now"
    return f"{shown} ago" if delta > 0 else f"in {shown}"


def duration(seconds: float | None) -> str:
    """A duration in the unit that keeps it short: `45 s`, `12 min`, `5 h`, `3 d`."""
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


def plain(value: Any) -> str:
    """A value that came from a record or a peer, shown as it is: characters a terminal
    would act on written as escapes."""
    shown = "-" if value is None else str(value)
    if not shown.isprintable():
        shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in shown)
    return shown


def short(value: Any, width: int = ID_WIDTH) -> Text:
    """An id cut to `width` characters; never read as markup."""
    shown = plain(value)
    if len(shown) > width:
        shown = shown[: width - 1] + "…"
    return Text(shown)


def count(n: int) -> str:
    return f"{n:,}"
