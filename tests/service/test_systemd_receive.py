"""systemd/syncd-receive.service: hardened like syncd.service (exposure <= 2.5), clean under
`systemd-analyze verify`, and wired to what `syncd receive` reads."""

from __future__ import annotations

import sys
from pathlib import Path

from syncd.config import CONFIG_ENV, WEBHOOK_SECRET_CREDENTIAL
from tests.systemd_units import exposure, needs_analyze, verify

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "syncd-receive.service"


@needs_analyze
def test_exposure_rating_at_most_2_5() -> None:
    rating, out = exposure(UNIT, "syncd-receive.service")
    assert rating <= 2.5
    assert out.returncode == 0, out.stderr


@needs_analyze
def test_verifies_cleanly(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/syncd receive --config /etc/syncd/config.toml\n" in text
    copy = tmp_path / "syncd-receive.service"
    copy.write_text(text.replace("ExecStart=/usr/local/bin/syncd ", f"ExecStart={sys.executable} "))
    out = verify(copy)
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")


def test_wired_to_what_the_receiver_reads() -> None:
    lines = {line.strip() for line in UNIT.read_text().splitlines()}
    for wanted in (
        "Type=notify",
        "DynamicUser=yes",
        "ExecReload=/bin/kill -HUP $MAINPID",
        f"LoadCredential={WEBHOOK_SECRET_CREDENTIAL}:/etc/syncd/credentials/{WEBHOOK_SECRET_CREDENTIAL}",
        f"Environment={CONFIG_ENV}=/etc/syncd/config.toml",
    ):
        assert wanted in lines
    # Stateless: nothing that would keep data on the host, and no API key.
    assert not any(line.startswith(("StateDirectory", "LoadCredential=petstore-api-key")) for line in lines)
