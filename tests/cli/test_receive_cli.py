"""`syncd receive` refuses to start without what it needs, in one line with exit 2, before
it binds anything."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import syncd.config
from syncd.cli import main


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("PETSTORE_API_KEY", "PETSTORE_WEBHOOK_SECRET", "CREDENTIALS_DIRECTORY", "SYNCD_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(syncd.config, "DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))


@pytest.mark.parametrize(
    ("text", "env", "needle"),
    [
        ("", {}, "webhook.secret_env: syncd receive needs a webhook secret"),
        ('[nats]\ntoken_env = "SYNCD_TEST_NATS_TOKEN"\n', {"PETSTORE_WEBHOOK_SECRET": "s"}, "nats.token_env"),
        ("[nats]\nreplicas = 9\n", {"PETSTORE_WEBHOOK_SECRET": "s"}, "nats.replicas"),
    ],
)
def test_refuses_to_start_without_what_it_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, env: dict[str, str], needle: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "receive.toml"
    path.write_text(text)
    result = CliRunner().invoke(main, ["receive", "--config", str(path)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("syncd: config error: ")
    assert needle in result.output
    assert len(result.output.strip().splitlines()) == 1
