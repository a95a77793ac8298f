"""`[nats]` and the keys that use it: what check-config refuses, naming the key, and the
defaults a stream syncd creates gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncd.config import load_config
from syncd.errors import ConfigError

ENV = {"PETSTORE_API_KEY": "key", "PETSTORE_WEBHOOK_SECRET": "secret"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "syncd.toml"
    path.write_text(text)
    return path


def refused(tmp_path: Path, text: str, env: dict[str, str] = ENV) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env=env)
    return info.value


def test_defaults() -> None:
    cfg = load_config(None, env={}, require_secrets=False)
    assert cfg.webhook.inbox == "sqlite"
    assert cfg.webhook.ack_timeout == 2.0
    n = cfg.nats
    assert (n.servers, n.inbox_stream, n.changes_stream) == (
        ("nats://127.0.0.1:4222",),
        "SYNCD_INBOX",
        "SYNCD_CHANGES",
    )
    assert (n.replicas, n.duplicate_window, n.consumer) == (3, 120.0, None)
    assert n.consumer_name("abc") == "syncd-abc"


@pytest.mark.parametrize(
    ("text", "key", "needle"),
    [
        ('[nats]\nservers = ["http://127.0.0.1:4222"]\n', "nats.servers", "not a NATS URL"),
        ('[nats]\nservers = ["nats://127.0.0.1:99999"]\n', "nats.servers", "invalid port"),
        ('[nats]\nservers = ["nats://u:pw@127.0.0.1:4222"]\n', "nats.servers", "password"),
        ("[nats]\nservers = []\n", "nats.servers", "at least one"),
        ('[nats]\ninbox_stream = "A.B"\n', "nats.inbox_stream", "not a JetStream name"),
        ('[nats]\nconsumer = "a b"\n', "nats.consumer", "not a JetStream name"),
        ('[nats]\ninbox_stream = "X"\nchanges_stream = "X"\n', "nats", "different streams"),
        ('[sync]\nmode = "poll"\n[webhook]\ninbox = "nats"\n', "webhook.inbox", 'sync.mode = "push"'),
        ('[nats]\ntoken_env = "SYNCD_TEST_NATS_TOKEN"\n', "nats.token_env", "is not set"),
        ('[nats]\ncredentials_file = "/nonexistent/nats.creds"\n', "nats.credentials_file", "cannot read"),
    ],
)
def test_refused_naming_the_key(tmp_path: Path, text: str, key: str, needle: str) -> None:
    err = refused(tmp_path, text)
    assert err.key == key
    assert needle in str(err)


def test_token_and_credentials_are_resolved_and_never_shown(tmp_path: Path) -> None:
    creds = tmp_path / "nats.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\n")
    path = write(tmp_path, f'[nats]\ntoken_env = "SYNCD_TEST_NATS_TOKEN"\ncredentials_file = "{creds}"\n')
    cfg = load_config(path, env={**ENV, "SYNCD_TEST_NATS_TOKEN": "t0ken-value"})
    assert cfg.secrets.nats_token == "t0ken-value"
    assert "t0ken-value" not in repr(cfg.redacted())
    assert cfg.redacted()["secrets"]["nats_token"] == "<set>"
    # Without secrets required (status, verify) a missing token is no error.
    assert load_config(path, env={}, require_secrets=False).secrets.nats_token is None
