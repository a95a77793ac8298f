"""The admin status page in a real browser: headless Chromium (Debian's `chromium` with its
`chromium-driver`, driven by selenium) against `syncd run` and the simulator.

It reads what a person would: the rendered mode, resources and counts; then new webhooks
arrive and the same page, never reloaded, shows them. A screenshot of each viewport is
saved in the test's tmp dir.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import DaemonProcess, SimProcess, order_created

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra")
from selenium.common.exceptions import NoSuchElementException  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow

PRELOADED = 20
NEW = 5


def _browser_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        reason = "no headless browser: install Debian's chromium and chromium-driver (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(reason)  # CI installs them: a missing browser there is a broken setup
        pytest.skip(reason)
    return browser, driver


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    binary, driver_path = _browser_paths()
    options = Options()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1200,1600")
    # The driver is the system's: selenium must not try to download one.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def _order_created(n: int) -> tuple[bytes, dict[str, str]]:
    return order_created(f"evt_page_{n:04d}", 700_000 + n, customer="page@example.com", total=2.5)


def _text(driver: webdriver.Chrome, css: str) -> str:
    """The element's rendered text, read in one script call: the page replaces its table
    rows on every refresh, so an element found by one call may be gone by the next one
    (a stale element reference)."""
    text = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e === null ? null : e.innerText.trim();",
        css,
    )
    if not isinstance(text, str):
        # What find_element raises, so a wait keeps waiting for the element to appear.
        raise NoSuchElementException(f"no element matches {css!r}")
    return text


def _until(driver: webdriver.Chrome, what: str, check: Callable[[webdriver.Chrome], bool]) -> None:
    WebDriverWait(driver, 30, poll_frequency=0.2).until(check, message=f"the page never showed {what}")


def test_the_page_shows_the_daemon_and_follows_new_webhooks_without_reloading(
    start_sim: Callable[..., SimProcess],
    start_daemon: Callable[..., DaemonProcess],
    browser: webdriver.Chrome,
    tmp_path: Path,
) -> None:
    sim = start_sim("--rate", "0", "--preload-orders", str(PRELOADED), "--preload-customers", "3")
    daemon = start_daemon(sim)
    browser.get(daemon.admin_url + "/")
    orders_live = "#resources tr[data-resource='orders'] .live"

    _until(browser, "the first poll's orders", lambda d: _text(d, orders_live) == str(PRELOADED))
    _until(browser, "readiness", lambda d: _text(d, "#ready").startswith("ready: last successful poll"))
    assert _text(browser, "#mode-current") == "push"
    assert _text(browser, "#mode-reason") == "started in push mode"
    assert _text(browser, "#daemon").startswith("running, pid ")
    resources = browser.execute_script(
        "return [...document.querySelectorAll('#resources tbody tr')].map(r => r.dataset.resource);"
    )
    assert resources == ["orders", "customers", "inventory"]
    assert _text(browser, "#resources tr[data-resource='customers'] .live") == "3"
    assert _text(browser, "#resources tr[data-resource='orders'] .tombstoned") == "0"
    assert _text(browser, "#last-webhook") == "never"
    assert _text(browser, "#events-applied") == "0"
    browser.save_screenshot(str(tmp_path / "status-before.png"))

    # A marker the page would lose on a reload.
    browser.execute_script("window.syncdTestMarker = 'same page'")
    refreshed = int(browser.execute_script("return document.body.dataset.refreshed"))
    assert daemon.webhook_url is not None
    with httpx.Client(timeout=10) as client:
        for n in range(NEW):
            raw, headers = _order_created(n)
            assert client.post(daemon.webhook_url, content=raw, headers=headers).status_code == 200

    _until(browser, "the new orders", lambda d: _text(d, orders_live) == str(PRELOADED + NEW))
    _until(browser, "the applied events", lambda d: _text(d, "#events-applied") == str(NEW))
    _until(
        browser,
        "a delivery rate",
        lambda d: not _text(d, "#rate-summary").startswith("now 0.0/s, peak 0.0/s"),
    )
    assert _text(browser, "#last-webhook").endswith("s ago")
    assert _text(browser, "#latency-summary").startswith("worst ")
    assert browser.execute_script("return window.syncdTestMarker") == "same page"
    assert int(browser.execute_script("return document.body.dataset.refreshed")) > refreshed
    # The charts are drawn by the vendored uPlot, loaded from syncd itself.
    assert browser.find_elements(By.CSS_SELECTOR, "#rate-chart canvas")
    assert browser.execute_script("return typeof uPlot") == "function"
    browser.save_screenshot(str(tmp_path / "status-after.png"))

    # On a phone-sized viewport the page reflows instead of scrolling sideways.
    browser.set_window_size(390, 844)
    _until(
        browser,
        "a phone-width layout",
        lambda d: d.execute_script("return document.documentElement.scrollWidth <= window.innerWidth"),
    )
    browser.save_screenshot(str(tmp_path / "status-phone.png"))
    assert (tmp_path / "status-after.png").stat().st_size > 10_000
