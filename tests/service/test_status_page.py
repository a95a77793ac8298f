"""The admin listener's status page over real HTTP: the page and its assets come from the
package, /status.json is `syncd status --json` read from a real store, /history.json the ring."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncd.config import Config
from syncd.metrics import Metrics
from syncd.ops.status import collect_status
from syncd.service.admin import ReadinessInputs, create_admin_app
from syncd.service.status_page import STATIC, status_routes, store_report
from syncd.sim.server import ThreadedServer
from syncd.store.db import Store
from tests.ops.test_status import config, populate, validate


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return config(tmp_path)


@pytest.fixture
def admin(cfg: Config) -> Iterator[tuple[str, Metrics]]:
    metrics = Metrics()

    async def readiness() -> ReadinessInputs:
        return ReadinessInputs(True, "push", 30, time.time(), None)

    page = status_routes(store_report(lambda: cfg), metrics.history)
    server = ThreadedServer(create_admin_app(metrics, readiness, routes=page))
    server.start()
    try:
        yield server.base_url, metrics
    finally:
        server.stop()


def _without_clock(report: dict[str, Any]) -> dict[str, Any]:
    """The report less what moves with the clock between two reads."""
    out = {k: v for k, v in report.items() if k != "generated_at"}
    out["resources"] = {
        name: {k: v for k, v in r.items() if k != "lag_seconds"} for name, r in report["resources"].items()
    }
    return out


def test_status_json_is_the_status_report(cfg: Config, admin: tuple[str, Metrics]) -> None:
    store = Store(cfg.store.path)
    populate(store)
    store.close()
    url, _ = admin
    response = httpx.get(url + "/status.json")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    validate(body)
    assert _without_clock(body) == _without_clock(collect_status(cfg))
    assert body["mode"]["current"] == "fallback"
    assert body["resources"]["orders"]["live"] == 1


def test_status_json_says_why_when_there_is_no_store(admin: tuple[str, Metrics]) -> None:
    url, _ = admin
    response = httpx.get(url + "/status.json")
    assert response.status_code == 503
    assert "mirror.db" in response.json()["error"]
    # The page itself still loads, and says so in place of the figures.
    assert httpx.get(url + "/").status_code == 200


def test_history_json_is_the_ring(admin: tuple[str, Metrics]) -> None:
    url, metrics = admin
    now = time.time()
    metrics.history.deliveries(now - 20, 25)
    metrics.history.latencies(now - 20, [0.004, 0.006])
    body = httpx.get(url + "/history.json").json()
    assert body["step_seconds"] == 5.0
    assert len(body["t"]) == len(body["deliveries_per_second"]) == 180
    assert 5.0 in body["deliveries_per_second"]
    assert 5.0 in body["latency_mean_ms"]
    assert 6.0 in body["latency_max_ms"]


def test_the_page_loads_only_what_syncd_serves(admin: tuple[str, Metrics]) -> None:
    url, _ = admin
    page = httpx.get(url + "/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    html = page.text
    assert '<meta name="viewport"' in html
    assert '<html lang="en">' in html
    assert "<script>" not in html  # the policy would block inline code
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assets = [r for r in refs if r.startswith("/assets/")]
    assert {"/assets/uPlot.iife.min.js", "/assets/status.js", "/assets/status.css"} <= set(assets)
    assert not [r for r in refs if "//" in r], "every asset is served by syncd, none from a CDN"
    for asset in assets:
        response = httpx.get(url + asset)
        assert response.status_code == 200, asset
        assert response.content == (STATIC / asset.removeprefix("/assets/")).read_bytes()
    js = httpx.get(url + "/assets/status.js").text
    assert "innerHTML" not in js  # store values are set as text
    assert "/status.json" in js
    assert "/history.json" in js


def test_every_table_header_and_chart_is_labelled(admin: tuple[str, Metrics]) -> None:
    html = httpx.get(admin[0] + "/").text
    for table in re.findall(r"<table.*?</table>", html, flags=re.S):
        headers = re.findall(r"<th\b[^>]*>", table)
        assert headers
        assert all('scope="col"' in th for th in headers), table
    for chart in re.findall(r'<div id="[a-z]+-chart"[^>]*>', html):
        assert 'role="img"' in chart
        assert "aria-labelledby=" in chart
    assert 'aria-live="polite"' in html


def _luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _contrast(a: str, b: str) -> float:
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def test_text_colours_meet_wcag_aa_contrast() -> None:
    css = (STATIC / "status.css").read_text()
    colour = dict(re.findall(r"--([a-z-]+):\s*(#[0-9a-fA-F]{6})", css))
    pairs = [
        ("fg", "bg"),
        ("fg", "card"),
        ("muted", "card"),
        ("muted", "bg"),
        ("link", "card"),
        ("ok-fg", "ok-bg"),
        ("warn-fg", "warn-bg"),
        ("bad-fg", "bad-bg"),
        ("fg", "line"),
    ]
    for fg, bg in pairs:
        assert _contrast(colour[fg], colour[bg]) >= 4.5, (fg, bg)
