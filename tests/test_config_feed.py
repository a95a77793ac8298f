"""`[changes]` and `[[sinks]]`: what is refused (naming the key as the file has it, sinks.N.key),
how an http sink's secret is found and checked, and that it never shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncd.config import Config, load_config
from syncd.config_feed import ChangesConfig, ExecSinkConfig, HttpSinkConfig, sink_credential
from syncd.errors import ConfigError

from .config_support import SINK_SECRET, SINK_SECRET_ENV

ENV = {"PETSTORE_API_KEY": "key-123", "PETSTORE_WEBHOOK_SECRET": "whsec-1", SINK_SECRET_ENV: SINK_SECRET}
HTTP = f'[[sinks]]\nname = "app"\ntype = "http"\nurl = "http://127.0.0.1:9000/hook"\nsecret_env = "{SINK_SECRET_ENV}"\n'
EXEC = '[[sinks]]\nname = "script"\ntype = "exec"\ncommand = ["/usr/local/bin/handle", "--quiet"]\n'


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None, *, require: bool = True) -> Config:
    path = tmp_path / "syncd.toml"
    path.write_text(text)
    return load_config(path, env=ENV if env is None else env, require_secrets=require)


def refused(
    tmp_path: Path, text: str, env: dict[str, str] | None = None, *, require: bool = True
) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env, require=require)
    assert str(info.value).startswith(f"{tmp_path / 'syncd.toml'}: {info.value.key}: ")
    return info.value


# -- what loads --------------------------------------------------------------------------


def test_defaults() -> None:
    cfg = Config()
    assert cfg.changes == ChangesConfig()
    assert (cfg.changes.enabled, cfg.changes.include_initial) == (True, False)
    assert (cfg.changes.retention, cfg.changes.prune_interval) == (7 * 86400.0, 60.0)
    assert cfg.sinks == ()
    assert cfg.secrets.sink_secrets == {}


def test_changes_section(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        '[changes]\nenabled = false\ninclude_initial = true\nretention = "36h"\nprune_interval = "5m"\n',
    )
    assert cfg.changes.model_dump() == {
        "enabled": False,
        "include_initial": True,
        "retention": "36h",
        "prune_interval": "5m",
    }
    assert (cfg.changes.retention, cfg.changes.prune_interval) == (129600.0, 300.0)


def test_sinks_load_with_their_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, HTTP + EXEC)
    http, exec_ = cfg.sinks
    assert http == HttpSinkConfig(name="app", url="http://127.0.0.1:9000/hook", secret_env=SINK_SECRET_ENV)
    assert exec_ == ExecSinkConfig(name="script", command=("/usr/local/bin/handle", "--quiet"))
    for sink in cfg.sinks:
        assert (sink.events, sink.timeout, sink.on_failure) == (("*",), 10.0, "block")
        assert (sink.max_attempts, sink.batch_size, sink.start) == (10, 100, "head")
    assert exec_.env == {}
    assert cfg.secrets.sink_secrets == {"app": SINK_SECRET}


def test_lists_become_tuples_and_the_url_stays_as_written(tmp_path: Path) -> None:
    text = HTTP.replace("/hook", "/hook/") + 'events = ["order.*", "customer.deleted"]\n'
    [sink] = load(tmp_path, text).sinks
    assert sink.events == ("order.*", "customer.deleted")
    assert isinstance(sink, HttpSinkConfig)
    assert sink.url == "http://127.0.0.1:9000/hook/"


@pytest.mark.parametrize("name", ["a", "app_2", "order-handler", "x" * 64, "0"])
def test_names_that_are_taken(tmp_path: Path, name: str) -> None:
    assert load(tmp_path, EXEC.replace('"script"', f'"{name}"')).sinks[0].name == name


def test_sinks_are_immutable(tmp_path: Path) -> None:
    [sink] = load(tmp_path, EXEC).sinks
    with pytest.raises(ValueError, match="frozen"):
        sink.name = "other"  # type: ignore[misc]


# -- what is refused ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        (EXEC + EXEC, "sinks.1.name", "'script' is already the name of sinks.0"),
        (
            HTTP + EXEC + HTTP.replace('"app"', '"other"') + EXEC,
            "sinks.3.name",
            "already the name of sinks.1",
        ),
        (EXEC.replace('"script"', '"Script"'), "sinks.0.name", "'Script' is not a sink name"),
        (EXEC.replace('"script"', '""'), "sinks.0.name", "is not a sink name"),
        (EXEC.replace('"script"', '"my script"'), "sinks.0.name", "is not a sink name"),
        (EXEC.replace('"script"', f'"{"x" * 65}"'), "sinks.0.name", "1 to 64 of a-z, 0-9, '_' and '-'"),
        (EXEC.replace('"script"', "5"), "sinks.0.name", "valid string"),
        ('[[sinks]]\nname = "a"\ntype = "kafka"\n', "sinks.0.type", "'kafka' is not one of http, exec, nats"),
        (
            '[[sinks]]\nname = "a"\ncommand = ["true"]\n',
            "sinks.0.type",
            "required key is missing: one of http, exec",
        ),
        (HTTP.replace('url = "http://127.0.0.1:9000/hook"\n', ""), "sinks.0.url", "required key is missing"),
        (HTTP.replace("http://127.0.0.1", "ftp://127.0.0.1"), "sinks.0.url", "not an http(s) URL"),
        ('[[sinks]]\nname = "a"\ntype = "exec"\n', "sinks.0.command", "required key is missing"),
        (
            EXEC.replace('["/usr/local/bin/handle", "--quiet"]', "[]"),
            "sinks.0.command",
            "at least one argument",
        ),
        (
            EXEC.replace('["/usr/local/bin/handle", "--quiet"]', '["", "x"]'),
            "sinks.0.command",
            "must not be empty",
        ),
        (
            EXEC.replace('["/usr/local/bin/handle", "--quiet"]', '"handle --quiet"'),
            "sinks.0.command",
            "no shell",
        ),
        (EXEC + "events = []\n", "sinks.0.events", "list at least one event pattern"),
        (EXEC + 'events = ["order.*", ""]\n', "sinks.0.events", "must not be empty"),
        (EXEC + 'events = "order.*"\n', "sinks.0.events", "must be a list of event patterns"),
        (EXEC + 'on_failure = "retry"\n', "sinks.0.on_failure", "'block' or 'skip'"),
        (EXEC + 'start = "end"\n', "sinks.0.start", "'head' or 'beginning'"),
        (HTTP + 'timeout = "2h"\n', "sinks.0.timeout", "between 100ms and 1h"),
        (EXEC + 'env = { "A-B" = "x" }\n', "sinks.0.env", "not an environment variable name"),
        (EXEC + 'env = { SYNCD_SINK = "x" }\n', "sinks.0.env", "set by syncd"),
        (EXEC + "env = { A = 1 }\n", "sinks.0.env.A", "valid string"),
        (
            HTTP + 'secret_file = "/etc/syncd/s"\n',
            "sinks.0.secret_file",
            "set secret_env or secret_file, not both",
        ),
        (HTTP.replace(f'secret_env = "{SINK_SECRET_ENV}"\n', ""), "sinks.0.secret_env", "set secret_env"),
        (HTTP.replace(f'"{SINK_SECRET_ENV}"', '""'), "sinks.0.secret_env", "must not be empty"),
        (EXEC + 'url = "http://127.0.0.1/"\n', "sinks.0.url", "unknown key"),
        (HTTP + 'command = ["true"]\n', "sinks.0.command", "unknown key"),
        (HTTP + "retries = 3\n", "sinks.0.retries", "unknown key"),
        ('[sinks]\nname = "a"\ntype = "exec"\n', "sinks", "[[sinks]] table"),
        ('sinks = ["a"]\n', "sinks.0", "valid dictionary"),
        ("[changes]\nretention = 3600\n", "changes.retention", "duration"),
        ("[changes]\nenabled = 1\n", "changes.enabled", "valid boolean"),
        ("[changes]\npruning = true\n", "changes.pruning", "unknown key"),
    ],
)
def test_errors_name_the_key_as_the_file_has_it(tmp_path: Path, text: str, key: str, problem: str) -> None:
    error = refused(tmp_path, text)
    assert error.key == key
    assert problem in error.problem


# -- the http sink's secret --------------------------------------------------------------


def test_a_missing_secret_names_the_key_and_where_to_put_it(tmp_path: Path) -> None:
    env = {k: v for k, v in ENV.items() if k != SINK_SECRET_ENV}
    error = refused(tmp_path, EXEC + HTTP, env)
    assert error.key == "sinks.1.secret_env"
    assert f"${SINK_SECRET_ENV}" in error.problem
    assert sink_credential("app") == "sink-app-secret"
    assert "'sink-app-secret' in $CREDENTIALS_DIRECTORY" in error.problem
    # Commands that run without secrets (status) still load it.
    assert load(tmp_path, EXEC + HTTP, env, require=False).secrets.sink_secrets == {}


@pytest.mark.parametrize("bad", ["not base64!", "whsec_", "whsec_a", "whsec_***"])
def test_a_secret_that_cannot_sign_is_refused_even_when_not_required(tmp_path: Path, bad: str) -> None:
    for require in (True, False):
        error = refused(tmp_path, HTTP, {**ENV, SINK_SECRET_ENV: bad}, require=require)
        assert error.key == "sinks.0.secret_env"
        assert "unusable for sink 'app'" in error.problem
        assert "standard-webhooks" in error.problem
        assert bad not in str(error)


def test_a_secret_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "sink-secret"
    secret.write_text(SINK_SECRET + "\n")
    text = HTTP.replace(f'secret_env = "{SINK_SECRET_ENV}"', f'secret_file = "{secret}"')
    assert load(tmp_path, text).secrets.sink_secrets == {"app": SINK_SECRET}
    secret.write_text("whsec_***\n")
    assert refused(tmp_path, text).key == "sinks.0.secret_file"
    secret.write_text("\n")
    assert "is empty" in refused(tmp_path, text).problem
    secret.unlink()
    error = refused(tmp_path, text, require=False)
    assert (error.key, error.problem.split(":")[0]) == (
        "sinks.0.secret_file",
        f"cannot read secret file {str(secret)!r}",
    )


def test_a_secret_from_the_credentials_directory(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "sink-app-secret").write_text(SINK_SECRET)
    env = {k: v for k, v in ENV.items() if k != SINK_SECRET_ENV}
    cfg = load(tmp_path, HTTP, {**env, "CREDENTIALS_DIRECTORY": str(creds)})
    assert cfg.secrets.sink_secrets == {"app": SINK_SECRET}
    # The environment variable, when set, comes first.
    other = "whsec_" + "b3RoZXItc2VjcmV0"
    cfg = load(tmp_path, HTTP, {**env, "CREDENTIALS_DIRECTORY": str(creds), SINK_SECRET_ENV: other})
    assert cfg.secrets.sink_secrets == {"app": other}


def test_the_secret_is_never_in_the_redacted_config(tmp_path: Path) -> None:
    cfg = load(tmp_path, HTTP + EXEC + HTTP.replace('"app"', '"other"'))
    text = repr(cfg.redacted())
    assert SINK_SECRET not in text
    assert SINK_SECRET.removeprefix("whsec_") not in text
    assert cfg.redacted()["secrets"]["sink_secrets"] == {"app": "<set>", "other": "<set>"}
    assert [s["name"] for s in cfg.redacted()["sinks"]] == ["app", "script", "other"]
    missing = load(tmp_path, HTTP, {"PETSTORE_API_KEY": "k", "PETSTORE_WEBHOOK_SECRET": "h"}, require=False)
    assert missing.redacted()["secrets"]["sink_secrets"] == {"app": "<missing>"}
    # Nor in the model's own repr (logs of a config object).
    assert SINK_SECRET not in repr(cfg)
