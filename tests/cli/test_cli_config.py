"""`syncd check-config`: exit codes, messages that name the key, secrets never printed."""

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import syncd.config
from syncd.cli import main
from syncd.config import API_KEY_CREDENTIAL, WEBHOOK_SECRET_CREDENTIAL, Config

from ..config_support import SINK_SECRET, SINK_SECRET_ENV, config_text, sink_keys, sink_table

API_KEY = "sk_live_4f9a8b7c6d5e"
HOOK_SECRETS = ("whsec_old_31415", "whsec_new_27182")

#: One bad value for every key of config.py (the test below fails when a key is missing here);
#: a sink's keys as sinks.<type>.<key>, set in a [[sinks]] table of that type.
BAD_VALUES: dict[str, Any] = {
    "api.base_url": "ftp://example.com",
    "api.api_key_env": 5,
    "api.api_key_file": 5,
    "api.timeout": "10 seconds",
    "api.connect_timeout": "-1s",
    "api.max_connections": 0,
    "api.max_response": "0B",
    "api.rate_limit": "0/s",
    "api.visibility_lag": "2h",
    "store.path": 7,
    "sync.mode": "pull",
    "sync.resources": ["pets"],
    "poll.interval": "0s",
    "poll.safety_interval": "never",
    "poll.lookback": 15,
    "poll.page_size": 1001,
    "poll.full_relist_interval": "0s",
    "poll.jitter": "1x",
    "poll.max_clock_skew": "-1s",
    "poll.max_pages": 0,
    "poll.max_tombstone_ratio": 1.5,
    "poll.tombstone_floor": -1,
    "webhook.listen": "8787",
    "webhook.path": "webhooks/petstore",
    "webhook.scheme": "hmac",
    "webhook.secret_env": ["A"],
    "webhook.secret_file": False,
    "webhook.tolerance": "5 minutes",
    "webhook.max_body": "1TiB",
    "webhook.max_backlog": 0,
    "webhook.max_backlog_bytes": "1025GiB",
    "webhook.allow_ips": ["10.0.0.300/8"],
    "webhook.trusted_proxies": "10.0.0.0/8",
    "webhook.rate_limit": "fast",
    "webhook.fetch_thin_events": "yes",
    "webhook.dedupe_retention": "0s",
    "webhook.audit_retention": "0.5s",
    "webhook.tls_cert": 1,
    "webhook.tls_key": 1,
    "webhook.header_timeout": "0s",
    "webhook.body_timeout": "0s",
    "webhook.idle_timeout": "2h",
    "webhook.max_header_bytes": "1B",
    "webhook.max_headers": 7,
    "webhook.max_connections": 0,
    "fallback.silence": "5",
    "fallback.missed_ratio": 1.5,
    "fallback.recover_after": 0,
    "admin.listen": "127.0.0.1:70000",
    "log.level": "verbose",
    "log.format": "xml",
    "webhook.inbox": "redis",
    "webhook.ack_timeout": "5s",
    "nats.servers": "nats://127.0.0.1:4222",
    "nats.credentials_file": "/nonexistent/nats.creds",
    "nats.token_env": "",
    "nats.inbox_stream": "SYNCD.INBOX",
    "nats.changes_stream": "has space",
    "nats.replicas": 0,
    "nats.duplicate_window": "0s",
    "nats.consumer": "a>b",
    "nats.batch_size": 0,
    "nats.ack_wait": "2h",
    "nats.connect_timeout": "0s",
    "changes.enabled": "yes",
    "changes.include_initial": 1,
    "changes.retention": "7 days",
    "changes.prune_interval": "0s",
    "sinks.http.name": "My App",
    "sinks.http.type": "kafka",
    "sinks.http.url": "ftp://example.com/hook",
    "sinks.http.secret_env": ["A"],
    "sinks.http.secret_file": False,
    "sinks.http.events": [],
    "sinks.http.timeout": "10",
    "sinks.http.on_failure": "retry",
    "sinks.http.max_attempts": 0,
    "sinks.http.batch_size": 10_001,
    "sinks.http.start": "end",
    "sinks.exec.name": "",
    "sinks.exec.type": "shell",
    "sinks.exec.command": "/bin/true --quiet",
    "sinks.exec.events": [""],
    "sinks.exec.timeout": "0s",
    "sinks.exec.on_failure": "drop",
    "sinks.exec.max_attempts": "10",
    "sinks.exec.batch_size": 0,
    "sinks.exec.start": "tail",
    "sinks.exec.env": {"NOT-A-NAME": "x"},
    "sinks.nats.name": "Bus!",
    "sinks.nats.type": "amqp",
    "sinks.nats.events": "order.*",
    "sinks.nats.timeout": "2h",
    "sinks.nats.on_failure": "ignore",
    "sinks.nats.max_attempts": -1,
    "sinks.nats.batch_size": 10_001,
    "sinks.nats.start": "middle",
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("PETSTORE_API_KEY", "PETSTORE_WEBHOOK_SECRET", "CREDENTIALS_DIRECTORY", "SYNCD_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    # Never read the machine's own config.
    monkeypatch.setattr(syncd.config, "DEFAULT_CONFIG_PATH", str(tmp_path / "etc-syncd-config.toml"))


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PETSTORE_API_KEY", API_KEY)
    monkeypatch.setenv("PETSTORE_WEBHOOK_SECRET", ",".join(HOOK_SECRETS))
    monkeypatch.setenv(SINK_SECRET_ENV, SINK_SECRET)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def write(tmp_path: Path, text: str = "", name: str = "syncd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def check(*args: str) -> Result:
    return CliRunner().invoke(main, ["check-config", *args])


def assert_clean_failure(result: Result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert result.output.startswith("syncd: config error: ")
    assert len(result.output.strip().splitlines()) == 1
    for needle in needles:
        assert needle in result.output


def test_bad_values_cover_every_key() -> None:
    keys = {
        f"{section}.{key}"
        for section, info in Config.model_fields.items()
        if not info.exclude and section != "sinks"
        for key in info.annotation.model_fields  # type: ignore[union-attr]
    }
    assert set(BAD_VALUES) == keys | sink_keys()


@pytest.mark.usefixtures("secrets_env")
@pytest.mark.parametrize(("key", "value"), BAD_VALUES.items(), ids=list(BAD_VALUES))
def test_every_bad_value_exits_2_naming_the_key(tmp_path: Path, key: str, value: Any) -> None:
    text, named = config_text(key, toml_value(value))
    path = write(tmp_path, text)
    result = check("--config", str(path))
    assert_clean_failure(result, f"{path}: {named}")


@pytest.mark.usefixtures("secrets_env")
def test_valid_config_exits_0_and_prints_it(tmp_path: Path) -> None:
    path = write(tmp_path, '[poll]\ninterval = "45s"\n')
    result = check("--config", str(path))
    assert result.exit_code == 0, result.output
    assert f"# {path}: OK" in result.output
    assert 'interval = "45s"' in result.output
    data = json.loads(check("--config", str(path), "--json").output)
    assert data["poll"]["interval"] == "45s"


@pytest.mark.usefixtures("secrets_env")
@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[poll]\nintervall = "30s"\n', "poll.intervall: unknown key"),
        ('[polling]\ninterval = "30s"\n', "polling: unknown key"),
        ('[poll]\npage_size = "many"\n', "poll.page_size: Input should be a valid integer"),
        ("[sync]\nresources = 'orders'\n", "sync.resources: must be a list"),
        ("[poll\n", "not valid TOML"),
    ],
)
def test_unknown_keys_wrong_types_and_bad_toml(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text)
    assert_clean_failure(check("--config", str(path)), needle)


def test_missing_api_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PETSTORE_WEBHOOK_SECRET", "s")
    assert_clean_failure(check("--config", str(write(tmp_path))), "api.api_key_env", "$PETSTORE_API_KEY")


def test_missing_webhook_secret_in_push_mode_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PETSTORE_API_KEY", API_KEY)
    assert_clean_failure(
        check("--config", str(write(tmp_path, '[sync]\nmode = "push"\n'))),
        "webhook.secret_env",
        "push mode needs a webhook secret",
    )
    poll = write(tmp_path, '[sync]\nmode = "poll"\n', name="poll.toml")
    result = check("--config", str(poll))
    assert result.exit_code == 0, result.output
    assert '"<0 set>"' in result.output


def assert_secrets_hidden(result: Result, secrets: tuple[str, ...]) -> None:
    assert result.exit_code == 0, result.output
    for secret in secrets:
        assert secret not in result.output
        assert secret not in result.stderr


@pytest.mark.usefixtures("secrets_env")
def test_secrets_from_env_are_never_printed(tmp_path: Path) -> None:
    path = write(tmp_path)
    for args in ([], ["--json"]):
        result = check("--config", str(path), *args)
        assert_secrets_hidden(result, (API_KEY, *HOOK_SECRETS))
    assert 'api_key = "<set>"' in check("--config", str(path)).output
    assert 'webhook_secrets = "<2 set>"' in check("--config", str(path)).output


def test_secrets_from_files(tmp_path: Path) -> None:
    (tmp_path / "api-key").write_text(API_KEY + "\n")
    (tmp_path / "hook").write_text("a_secret_1,b_secret_2,c_secret_3\n")
    path = write(
        tmp_path,
        f'[api]\napi_key_file = "{tmp_path / "api-key"}"\n[webhook]\nsecret_file = "{tmp_path / "hook"}"\n',
    )
    result = check("--config", str(path))
    assert_secrets_hidden(result, (API_KEY, "a_secret_1", "b_secret_2", "c_secret_3"))
    assert 'webhook_secrets = "<3 set>"' in result.output


def test_unreadable_secret_file_names_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PETSTORE_WEBHOOK_SECRET", "s")
    path = write(tmp_path, f'[api]\napi_key_file = "{tmp_path / "absent"}"\n')
    assert_clean_failure(check("--config", str(path)), "api.api_key_file", "cannot read secret file")


def test_secrets_from_credentials_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / API_KEY_CREDENTIAL).write_text(API_KEY)
    (creds / WEBHOOK_SECRET_CREDENTIAL).write_text(",".join(HOOK_SECRETS))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    result = check("--config", str(write(tmp_path)))
    assert_secrets_hidden(result, (API_KEY, *HOOK_SECRETS))
    assert 'webhook_secrets = "<2 set>"' in result.output


@pytest.mark.usefixtures("secrets_env")
def test_config_option_beats_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = write(tmp_path, '[log]\nlevel = "debug"\n', name="good.toml")
    bad = write(tmp_path, "[log]\nlevel = 1\n", name="bad.toml")
    monkeypatch.setenv("SYNCD_CONFIG", str(bad))
    result = check("--config", str(good))
    assert result.exit_code == 0, result.output
    assert f"# {good}: OK" in result.output
    assert_clean_failure(check(), f"{bad}: log.level")


@pytest.mark.usefixtures("secrets_env")
def test_default_path_is_last_and_named_when_missing(tmp_path: Path) -> None:
    assert_clean_failure(check(), f"{tmp_path / 'etc-syncd-config.toml'}: file not found")


def test_default_path_is_etc_syncd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()
    monkeypatch.delenv("SYNCD_CONFIG", raising=False)
    if Path("/etc/syncd/config.toml").exists():
        pytest.skip("this machine has a real /etc/syncd/config.toml")
    assert_clean_failure(check(), "/etc/syncd/config.toml: file not found")


@pytest.mark.usefixtures("secrets_env")
def test_a_directory_as_config_is_a_clean_error(tmp_path: Path) -> None:
    assert_clean_failure(check("--config", str(tmp_path)), f"{tmp_path}: cannot read")


@pytest.mark.usefixtures("secrets_env")
def test_warnings_go_to_stderr_and_keep_exit_0(tmp_path: Path) -> None:
    path = write(tmp_path, '[poll]\nlookback = "2s"\n')
    result = check("--config", str(path))
    assert result.exit_code == 0
    assert "syncd: warning: poll.lookback" in result.stderr
    assert "syncd: warning" not in result.stdout


@pytest.mark.usefixtures("secrets_env")
def test_example_config_passes_check_config() -> None:
    example = Path(__file__).resolve().parents[2] / "config.example.toml"
    result = check("--config", str(example))
    assert result.exit_code == 0, result.output
    assert result.stderr == ""


@pytest.mark.usefixtures("secrets_env")
def test_sinks_print_as_arrays_of_tables_without_their_secrets(tmp_path: Path) -> None:
    exec_sink = sink_table("exec", "env", '{ DATABASE_URL = "postgresql:///shop" }')
    path = write(tmp_path, sink_table("http") + exec_sink)
    result = check("--config", str(path))
    assert_secrets_hidden(result, (SINK_SECRET, SINK_SECRET.removeprefix("whsec_")))
    assert result.output.count("[[sinks]]") == 2
    assert 'url = "http://127.0.0.1:9000/hook"' in result.output
    assert 'env = {"DATABASE_URL" = "postgresql:///shop"}' in result.output
    assert 'sink_secrets = {"app" = "<set>"}' in result.output
    as_json = check("--config", str(path), "--json")
    assert_secrets_hidden(as_json, (SINK_SECRET,))
    data = json.loads(as_json.output)
    assert [s["name"] for s in data["sinks"]] == ["app", "script"]
    assert data["secrets"]["sink_secrets"] == {"app": "<set>"}


@pytest.mark.usefixtures("secrets_env")
def test_a_missing_sink_secret_exits_2_naming_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SINK_SECRET_ENV)
    path = write(tmp_path, sink_table("exec") + sink_table("http"))
    assert_clean_failure(check("--config", str(path)), f"{path}: sinks.1.secret_env", f"${SINK_SECRET_ENV}")


@pytest.mark.usefixtures("secrets_env")
def test_sink_warnings_go_to_stderr(tmp_path: Path) -> None:
    path = write(tmp_path, sink_table("exec", "events", '["orders.*"]'))
    result = check("--config", str(path))
    assert result.exit_code == 0, result.output
    assert "syncd: warning: sinks.0.events: no event syncd emits matches 'orders.*'" in result.stderr
    assert "syncd: warning" not in result.stdout
