import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from syncd.config import (
    API_KEY_CREDENTIAL,
    DEFAULT_CONFIG_PATH,
    WEBHOOK_SECRET_CREDENTIAL,
    Config,
    check_warnings,
    load_config,
    resolve_config_path,
)
from syncd.config_values import (
    ListenAddress,
    format_duration,
    format_size,
    parse_duration,
    parse_listen,
    parse_rate,
    parse_size,
)
from syncd.errors import ConfigError

from .config_support import SINK_MODELS, SINK_SECRET

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"
SECRETS_ENV = {"PETSTORE_API_KEY": "key-123", "PETSTORE_WEBHOOK_SECRET": "whsec-1"}


def write(tmp_path: Path, text: str, name: str = "syncd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def sections() -> dict[str, type[BaseModel]]:
    """The [section] tables; `sinks` is an array of tables, see `example_sinks()`."""
    out = {}
    for name, info in Config.model_fields.items():
        if info.exclude or name == "sinks":
            continue
        assert isinstance(info.annotation, type)
        assert issubclass(info.annotation, BaseModel)
        out[name] = info.annotation
    return out


def all_keys() -> set[str]:
    return {f"{section}.{key}" for section, model in sections().items() for key in model.model_fields}


# -- value syntaxes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30), ("15m", 900), ("24h", 86400), ("7d", 604800), (" 1.5s ", 1.5)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["30", "30 sec", "-1s", "", "1w", 30, True, None])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize("seconds", [0.5, 1, 30, 90, 900, 3600, 86400, 604800])
def test_format_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(
    ("text", "size"), [("1MiB", 1048576), ("64KiB", 65536), ("1000", 1000), (512, 512), ("1GB", 10**9)]
)
def test_parse_size(text: object, size: int) -> None:
    assert parse_size(text) == size
    assert parse_size(format_size(size)) == size


@pytest.mark.parametrize("bad", ["1 TB", "MiB", "-5", "1.5MiB", 1.5, True])
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(bad)


def test_parse_rate() -> None:
    assert parse_rate("200/s") == 200
    assert parse_rate("600/m") == 10
    with pytest.raises(ValueError, match="rate"):
        parse_rate("200")


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:8787", ListenAddress("127.0.0.1", 8787)),
        ("[::1]:0", ListenAddress("::1", 0)),
        ("localhost:65535", ListenAddress("localhost", 65535)),
    ],
)
def test_parse_listen(text: str, address: ListenAddress) -> None:
    assert parse_listen(text) == address
    assert parse_listen(str(address)) == address


@pytest.mark.parametrize("bad", ["8787", "::1:8787", "host:99999", "host:", 8787])
def test_parse_listen_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match=r"host|port"):
        parse_listen(bad)


# -- loading ---------------------------------------------------------------------------------


def test_defaults_without_a_file() -> None:
    cfg = load_config(None, env={}, require_secrets=False)
    assert cfg == Config(source="<defaults>")
    assert cfg.poll.interval == 30
    assert cfg.webhook.max_body == 1024 * 1024
    assert cfg.webhook.listen == ListenAddress("127.0.0.1", 8787)
    assert cfg.secrets.api_key is None


def test_values_are_converted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[api]
base_url = "http://127.0.0.1:9000/v1/"
[sync]
mode = "poll"
resources = ["inventory"]
[poll]
interval = "2m"
[webhook]
allow_ips = ["10.0.0.0/8", "2001:db8::1/32"]
rate_limit = "120/m"
max_body = "64KiB"
""",
    )
    cfg = load_config(path, env=SECRETS_ENV)
    assert cfg.api.base_url == "http://127.0.0.1:9000/v1"
    assert cfg.sync.resources == ("inventory",)
    assert cfg.poll.interval == 120
    assert cfg.webhook.allow_ips == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("2001:db8::/32"),
    )
    assert cfg.webhook.rate_limit == 2
    assert cfg.webhook.max_body == 65536
    assert cfg.source == str(path)


def test_api_budget_and_response_cap(tmp_path: Path) -> None:
    assert Config().api.rate_limit is None  # unlimited unless set
    assert Config().api.max_response == 64 * 1024 * 1024
    cfg = load_config(
        write(tmp_path, "[api]\nrate_limit = '600/m'\nmax_response = '1KiB'\n"), env=SECRETS_ENV
    )
    assert cfg.api.rate_limit == 10.0
    assert cfg.api.max_response == 1024


def test_config_is_immutable() -> None:
    cfg = load_config(None, env={}, require_secrets=False)
    with pytest.raises(ValueError, match="frozen"):
        cfg.poll.interval = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[poll]\ninterval = 30\n", "poll.interval", "duration"),
        ("[poll]\npage_size = '500'\n", "poll.page_size", "valid integer"),
        ("[poll]\nintervall = '30s'\n", "poll.intervall", "unknown key"),
        ("[pol]\ninterval = '30s'\n", "pol", "unknown key"),
        ("secrets = 1\n", "secrets", "unknown key"),
        ("[webhook]\ntls_cert = '/c.pem'\n", "webhook.tls_cert", "set both tls_cert and tls_key"),
        ("[api]\nrate_limit = '0/s'\n", "api.rate_limit", "must be above 0"),
        ("[api]\nrate_limit = 'fast'\n", "api.rate_limit", "not a rate"),
        ("[api]\nmax_response = 0\n", "api.max_response", "between 1KiB and 4GiB"),
        ("[api]\nmax_response = '1023B'\n", "api.max_response", "between 1KiB and 4GiB"),
        ("[api]\nmax_response = '5GiB'\n", "api.max_response", "between 1KiB and 4GiB"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env=SECRETS_ENV)
    assert info.value.key == key
    assert problem in info.value.problem
    assert str(info.value).startswith(f"{path}: {key}: ")


def test_several_problems_are_counted(tmp_path: Path) -> None:
    path = write(tmp_path, "[poll]\ninterval = 1\nlookback = 2\npage_size = 0\n")
    with pytest.raises(ConfigError, match=r"\(and 2 more problems\)"):
        load_config(path, env=SECRETS_ENV)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.toml", env=SECRETS_ENV)
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[poll\n"), env=SECRETS_ENV)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path, env=SECRETS_ENV)


# -- secrets ---------------------------------------------------------------------------------


def test_secrets_from_environment() -> None:
    cfg = load_config(None, env={"PETSTORE_API_KEY": "k", "PETSTORE_WEBHOOK_SECRET": " a , b,,c "})
    assert cfg.secrets.api_key == "k"
    assert cfg.secrets.webhook_secrets == ("a", "b", "c")


def test_secret_env_names_are_configurable(tmp_path: Path) -> None:
    path = write(tmp_path, '[api]\napi_key_env = "MY_KEY"\n[webhook]\nsecret_env = "MY_HOOK"\n')
    cfg = load_config(path, env={"MY_KEY": "k2", "MY_HOOK": "h2", **SECRETS_ENV})
    assert (cfg.secrets.api_key, cfg.secrets.webhook_secrets) == ("k2", ("h2",))


def test_secrets_from_files_win_over_environment(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("file-key\n")
    (tmp_path / "hook").write_text("old,new\n")
    path = write(
        tmp_path,
        f'[api]\napi_key_file = "{tmp_path / "key"}"\n[webhook]\nsecret_file = "{tmp_path / "hook"}"\n',
    )
    cfg = load_config(path, env=SECRETS_ENV)
    assert cfg.secrets.api_key == "file-key"
    assert cfg.secrets.webhook_secrets == ("old", "new")


def test_missing_secret_file_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, f'[webhook]\nsecret_file = "{tmp_path / "nope"}"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env=SECRETS_ENV)
    assert info.value.key == "webhook.secret_file"
    assert "cannot read secret file" in info.value.problem


def test_secrets_from_credentials_directory(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / API_KEY_CREDENTIAL).write_text("cred-key\n")
    (creds / WEBHOOK_SECRET_CREDENTIAL).write_text("s1,s2")
    cfg = load_config(None, env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert cfg.secrets.api_key == "cred-key"
    assert cfg.secrets.webhook_secrets == ("s1", "s2")
    # The environment variable, when set, comes first.
    cfg = load_config(None, env={"CREDENTIALS_DIRECTORY": str(creds), **SECRETS_ENV})
    assert cfg.secrets.api_key == "key-123"


def test_missing_api_key_is_an_error_naming_where_to_put_it() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"PETSTORE_WEBHOOK_SECRET": "x"})
    assert info.value.key == "api.api_key_env"
    assert "$PETSTORE_API_KEY" in info.value.problem
    assert API_KEY_CREDENTIAL in info.value.problem


def test_webhook_secret_required_in_push_mode_only(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"PETSTORE_API_KEY": "k", "PETSTORE_WEBHOOK_SECRET": " , "})
    assert info.value.key == "webhook.secret_env"
    assert "comma-separated" in info.value.problem
    cfg = load_config(write(tmp_path, '[sync]\nmode = "poll"\n'), env={"PETSTORE_API_KEY": "k"})
    assert cfg.secrets.webhook_secrets == ()


def test_secrets_are_not_in_the_redacted_config(tmp_path: Path) -> None:
    cfg = load_config(
        None, env={"PETSTORE_API_KEY": "sk_live_very_secret", "PETSTORE_WEBHOOK_SECRET": "a1,b2"}
    )
    text = repr(cfg.redacted())
    assert "sk_live_very_secret" not in text
    assert "sk_live_very_secret" not in repr(cfg)
    assert "a1" not in text
    assert cfg.redacted()["secrets"] == {
        "api_key": "<set>",
        "webhook_secrets": "<2 set>",
        "sink_secrets": {},
        "nats_token": "<none>",
    }


# -- resolution and warnings -----------------------------------------------------------------


def test_resolve_config_path_order() -> None:
    assert resolve_config_path("/a.toml", {"SYNCD_CONFIG": "/b.toml"}) == "/a.toml"
    assert resolve_config_path(None, {"SYNCD_CONFIG": "/b.toml"}) == "/b.toml"
    assert resolve_config_path(None, {}) == DEFAULT_CONFIG_PATH == "/etc/syncd/config.toml"


def test_warnings_for_risky_but_valid_settings(tmp_path: Path) -> None:
    assert check_warnings(load_config(None, env={}, require_secrets=False)) == []
    path = write(
        tmp_path, '[poll]\nlookback = "5s"\nsafety_interval = "10s"\n[webhook]\ndedupe_retention = "1h"\n'
    )
    warnings = check_warnings(load_config(path, env={}, require_secrets=False))
    assert [w.split(" ", 1)[0] for w in warnings] == [
        "webhook.dedupe_retention",
        "poll.lookback",
        "poll.safety_interval",
    ]


# -- config.example.toml cannot drift from the code ------------------------------------------


def test_example_config_loads_and_equals_the_defaults() -> None:
    cfg = load_config(EXAMPLE, env={}, require_secrets=False)
    assert cfg.model_dump() == Config().model_dump()


def example_parts() -> tuple[str, str]:
    """config.example.toml as its [section] tables and its commented [[sinks]] examples,
    uncommented (each line loses its leading "# ", so their own comments stay comments)."""
    text = EXAMPLE.read_text()
    start = text.index("# [[sinks]]")
    sinks = text[start:].splitlines()
    assert all(line.startswith("#") for line in sinks), "the [[sinks]] examples end the file, commented"
    return text[:start], "\n".join(line.removeprefix("#").removeprefix(" ") for line in sinks) + "\n"


def documented_keys(text: str) -> set[str]:
    keys, section = set(), None
    for line in text.splitlines():
        if m := re.match(r"^\[(\w+)\]\s*$", line):
            section = m.group(1)
        elif section and (m := re.match(r"^#? ?(\w+) = ", line)):
            keys.add(f"{section}.{m.group(1)}")
    return keys


def test_example_config_documents_every_key() -> None:
    text, _ = example_parts()
    assert documented_keys(text) == all_keys()
    # Every key has a comment saying what it is for, on the line(s) above it.
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\w+ = ", line):
            assert lines[i - 1].startswith("#"), f"{line!r} has no comment above it"


def test_example_sinks_show_every_key_and_its_default() -> None:
    _, text = example_parts()
    sinks = tomllib.loads(text)["sinks"]
    assert [sink["type"] for sink in sinks] == list(SINK_MODELS)
    for sink in sinks:
        model = SINK_MODELS[sink["type"]]
        # The two ways to give an http sink its secret are exclusive: one is shown commented.
        shown = set(sink) | ({"secret_file"} if sink["type"] == "http" else set())
        assert shown == set(model.model_fields), sink["type"]
        assert "# secret_file = " in text
        defaults = {k: f.get_default(call_default_factory=True) for k, f in model.model_fields.items()}
        loaded = model.model_validate(sink)
        for key in set(sink) - {"name", "url", "command", "secret_env"}:
            assert getattr(loaded, key) == defaults[key], f"sinks.{sink['type']}.{key} is not at its default"
    # Each key is explained where it first appears (the exec example repeats the shared ones).
    explained: set[str] = set()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if (m := re.match(r"^(\w+) = ", line)) and m.group(1) not in explained:
            assert lines[i - 1].startswith("#"), f"{line!r} has no comment above it"
            explained.add(m.group(1))


def test_example_sinks_load_once_uncommented(tmp_path: Path) -> None:
    base, sinks = example_parts()
    path = write(tmp_path, base + sinks)
    cfg = load_config(path, env={**SECRETS_ENV, "SYNCD_SINK_SECRET": SINK_SECRET})
    assert [sink.name for sink in cfg.sinks] == ["app", "script", "bus"]
    assert cfg.secrets.sink_secrets == {"app": SINK_SECRET}


def test_example_config_unset_keys_are_the_ones_without_default() -> None:
    raw: dict[str, Any] = tomllib.loads(EXAMPLE.read_text())
    set_in_file = {f"{s}.{k}" for s, values in raw.items() for k in values}
    defaults = Config().model_dump()
    unset = {key for key in all_keys() if defaults[key.split(".")[0]][key.split(".")[1]] is None}
    assert set_in_file == all_keys() - unset
    assert unset == {
        "api.api_key_file",
        "api.rate_limit",
        "webhook.secret_file",
        "webhook.tls_cert",
        "webhook.tls_key",
        "nats.credentials_file",
        "nats.token_env",
        "nats.consumer",
    }


@pytest.mark.parametrize(
    ("key", "at_bound", "past_bound"),
    [
        ("header_timeout", "'1h'", "'3601s'"),
        ("header_timeout", "'1ms'", "'0s'"),
        ("body_timeout", "'1h'", "'3601s'"),
        ("body_timeout", "'1ms'", "'0s'"),
        ("idle_timeout", "'1h'", "'3601s'"),
        ("idle_timeout", "'1ms'", "'0ms'"),
        ("max_header_bytes", "'1KiB'", "1023"),
        ("max_header_bytes", "'16MiB'", "16777217"),
        ("max_headers", "8", "7"),
        ("max_headers", "10000", "10001"),
        ("max_connections", "16", "15"),
        ("max_connections", "65536", "65537"),
    ],
)
def test_listener_limits_at_and_past_their_bounds(
    tmp_path: Path, key: str, at_bound: str, past_bound: str
) -> None:
    cfg = load_config(write(tmp_path, f"[webhook]\n{key} = {at_bound}\n"), env=SECRETS_ENV)
    assert getattr(cfg.webhook, key) > 0
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f"[webhook]\n{key} = {past_bound}\n"), env=SECRETS_ENV)
    assert info.value.key == f"webhook.{key}"
