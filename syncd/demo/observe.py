"""What the demo shows of the daemon, read the way an operator reads it: `syncd status` on
its store (read-only) and its admin `/metrics`."""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from syncd.config import Config
from syncd.errors import SyncdError
from syncd.ops.status import collect_status


def format_age(seconds: float) -> str:
    """12.3s, 4m05s, 3h12m, 12d04h: a cursor lag read at a glance."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


@dataclass
class Observed:
    """What an operator sees of the daemon: `syncd status` and the admin `/metrics`."""

    status: dict[str, Any] | None
    metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.metrics.items() if n == name and want <= set(ls))


def observe(settings: Config, admin_url: str) -> Observed:
    status: dict[str, Any] | None = None
    with contextlib.suppress(SyncdError, sqlite3.Error):
        # Before the daemon has created its store there is nothing to report yet.
        status = collect_status(settings)
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    with contextlib.suppress(httpx.HTTPError):
        text = httpx.get(f"{admin_url}/metrics", timeout=2).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return Observed(status, samples)
