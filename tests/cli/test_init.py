"""`syncd init`: the file it writes passes `check-config`, says where each secret lives and
holds none; bad answers are refused before anything is written."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from syncd.cli import main
from syncd.config import API_KEY_CREDENTIAL, WEBHOOK_SECRET_CREDENTIAL, load_config

API_KEY = "sk_live_init_4f9a8b7c"
HOOK_SECRET = "whsec_init_27182818"


def init(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, ["init", *args], input=input, env={"SYNCD_CONFIG": None})


def check_config(path: Path, env: dict[str, str | None]) -> Result:
    clean: dict[str, str | None] = {
        "PETSTORE_API_KEY": None,
        "PETSTORE_WEBHOOK_SECRET": None,
        "CREDENTIALS_DIRECTORY": None,
        **env,
    }
    return CliRunner().invoke(main, ["check-config", "--config", str(path)], env=clean)


def assert_holds_no_secret(path: Path) -> None:
    text = path.read_text()
    assert API_KEY not in text
    assert HOOK_SECRET not in text
    # Only where a secret lives is set, never a secret itself.
    data = tomllib.loads(text)
    secret_keys = {k for section in data.values() for k in section if "key" in k or "secret" in k}
    assert secret_keys <= {"api_key_env", "api_key_file", "secret_env", "secret_file"}


def test_non_interactive_round_trip_passes_check_config(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "shop.toml"
    result = init(
        "--non-interactive",
        "--api-url",
        "http://127.0.0.1:8000/v1",
        "--mode",
        "push",
        "--store",
        str(tmp_path / "state" / "mirror.db"),
        "--api-key",
        "env:SHOP_API_KEY",
        "--webhook-secret",
        "env:SHOP_HOOK_SECRET",
        "--webhook-listen",
        "127.0.0.1:18787",
        "--webhook-path",
        "/hooks/shop",
        "--admin-listen",
        "127.0.0.1:19787",
        str(path),
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {path}" in result.output
    assert "set $SHOP_API_KEY to the API key" in result.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert_holds_no_secret(path)

    checked = check_config(path, {"SHOP_API_KEY": API_KEY, "SHOP_HOOK_SECRET": HOOK_SECRET})
    assert checked.exit_code == 0, checked.output
    assert f"# {path}: OK" in checked.output
    assert API_KEY not in checked.output
    cfg = load_config(path, env={"SHOP_API_KEY": API_KEY, "SHOP_HOOK_SECRET": HOOK_SECRET})
    assert cfg.api.base_url == "http://127.0.0.1:8000/v1"
    assert cfg.api.api_key_env == "SHOP_API_KEY"
    assert cfg.sync.mode == "push"
    assert cfg.store.path == str(tmp_path / "state" / "mirror.db")
    assert str(cfg.webhook.listen) == "127.0.0.1:18787"
    assert cfg.webhook.path == "/hooks/shop"
    assert str(cfg.admin.listen) == "127.0.0.1:19787"
    assert cfg.secrets.api_key == API_KEY
    assert cfg.secrets.webhook_secrets == (HOOK_SECRET,)
    # Every line it sets is explained.
    assert path.read_text().count("#") >= 10


def test_the_file_is_refused_by_check_config_until_the_secret_is_there(tmp_path: Path) -> None:
    path = tmp_path / "syncd.toml"
    assert (
        init("--non-interactive", "--api-key", "env:SHOP_API_KEY", "--mode", "poll", str(path)).exit_code == 0
    )
    missing = check_config(path, {})
    assert missing.exit_code == 2
    assert "SHOP_API_KEY" in missing.output


def test_an_instance_reads_its_secrets_from_systemd_credentials(tmp_path: Path) -> None:
    path = tmp_path / "shop-eu.toml"
    result = init("--non-interactive", "--instance", "shop-eu", str(path))
    assert result.exit_code == 0, result.output
    data = tomllib.loads(path.read_text())
    assert data["store"]["path"] == "/var/lib/syncd/shop-eu/mirror.db"
    assert "api_key_env" not in data["api"]
    assert "secret_env" not in data["webhook"]
    assert f"$CREDENTIALS_DIRECTORY/{API_KEY_CREDENTIAL}" in path.read_text()
    assert_holds_no_secret(path)
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / API_KEY_CREDENTIAL).write_text(API_KEY)
    (credentials / WEBHOOK_SECRET_CREDENTIAL).write_text(HOOK_SECRET)
    checked = check_config(path, {"CREDENTIALS_DIRECTORY": str(credentials)})
    assert checked.exit_code == 0, checked.output


def test_secrets_in_files(tmp_path: Path) -> None:
    key_file, hook_file = tmp_path / "api-key", tmp_path / "hook-secret"
    key_file.write_text(API_KEY)
    hook_file.write_text(HOOK_SECRET)
    path = tmp_path / "syncd.toml"
    result = init(
        "--non-interactive",
        "--api-key",
        f"file:{key_file}",
        "--webhook-secret",
        f"file:{hook_file}",
        str(path),
    )
    assert result.exit_code == 0, result.output
    assert_holds_no_secret(path)
    assert check_config(path, {}).exit_code == 0
    cfg = load_config(path, env={})
    assert (cfg.secrets.api_key, cfg.secrets.webhook_secrets) == (API_KEY, (HOOK_SECRET,))


def test_interactive_answers_by_prompt(tmp_path: Path) -> None:
    path = tmp_path / "syncd.toml"
    answers = "\n".join(
        [
            "http://127.0.0.1:8000/v1",  # API base URL
            "push",  # mode
            str(tmp_path / "mirror.db"),  # mirror file
            "env",  # where the API key lives
            "sk-live-4f9a8b7c",  # pasted the key itself by mistake: refused, asked again
            "SHOP_API_KEY",
            "file",  # where the webhook secret lives
            "hook-secret",  # not absolute: asked again
            str(tmp_path / "hook-secret"),
            "",  # webhook listener: default
            "",  # webhook path: default
            "127.0.0.1:19999",  # admin listener
        ]
    )
    result = init(str(path), input=answers + "\n")
    assert result.exit_code == 0, result.output
    assert "is not an environment variable name" in result.output
    assert "give the file as an absolute path" in result.output
    data = tomllib.loads(path.read_text())
    assert data["api"] == {"base_url": "http://127.0.0.1:8000/v1", "api_key_env": "SHOP_API_KEY"}
    assert data["webhook"]["secret_file"] == str(tmp_path / "hook-secret")
    assert f"put the webhook secret in {tmp_path / 'hook-secret'} (mode 0600)" in result.output
    assert data["webhook"]["listen"] == "127.0.0.1:8787"
    assert data["admin"]["listen"] == "127.0.0.1:19999"
    assert_holds_no_secret(path)
    assert "sk-live-4f9a8b7c" not in path.read_text()


def test_poll_mode_asks_nothing_about_webhooks(tmp_path: Path) -> None:
    path = tmp_path / "syncd.toml"
    answers = ["", "poll", "", "credential", ""]
    result = init(str(path), input="\n".join(answers) + "\n")
    assert result.exit_code == 0, result.output
    assert "Webhook" not in result.output
    assert "webhook" not in tomllib.loads(path.read_text())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--api-key", f"env:{API_KEY}-x"], "is not an environment variable name"),
        (["--api-key", "file:api-key"], "give the file as an absolute path"),
        (["--webhook-secret", "vault:shop"], "use env:NAME, file:/path or credential"),
        (["--instance", "../etc"], "a systemd instance name"),
    ],
)
def test_bad_flags_are_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    path = tmp_path / "syncd.toml"
    result = init("--non-interactive", *args, str(path))
    assert result.exit_code == 2
    assert message in result.output
    assert not path.exists()


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["--webhook-listen", "somewhere"], "webhook.listen"),
        (["--api-url", "ftp://example.com"], "api.base_url"),
        (["--store", ""], "store.path"),
    ],
)
def test_a_value_the_config_would_refuse_writes_nothing(tmp_path: Path, args: list[str], key: str) -> None:
    path = tmp_path / "syncd.toml"
    result = init("--non-interactive", *args, str(path))
    assert result.exit_code == 2
    assert key in result.output
    assert str(path) in result.output
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_an_existing_file_is_kept_unless_forced(tmp_path: Path) -> None:
    path = tmp_path / "syncd.toml"
    path.write_text("# mine\n")
    kept = init("--non-interactive", str(path))
    assert kept.exit_code == 2
    assert "--force replaces it" in kept.output
    assert path.read_text() == "# mine\n"
    replaced = init("--non-interactive", "--force", str(path))
    assert replaced.exit_code == 0
    assert "syncd init" in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["syncd.toml"]  # no temporary file left
