"""load_settings(env=...): the DESIGN's variables and defaults, the TOML file, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from receiver.config import Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def _empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No stray receiver.toml from the working directory is picked up."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def _refusal(env: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as caught:
        load_settings(env=env)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_defaults_follow_the_design_table() -> None:
    settings = load_settings(env={})
    assert settings.secret is None
    assert settings.old_secrets == ()
    assert settings.public_url == "http://127.0.0.1:8000"
    assert settings.database_url == "sqlite:///receiver.db"
    assert settings.config_path is None
    assert settings.admin_token is None
    assert settings.apiframe_api_key is None
    assert settings.apiframe_base_url == "https://api.apiframe.ai"
    assert settings.runbase_api_key is None
    assert settings.runbase_base_url == "https://runbase.net"
    assert settings.runbase_rate_limit == 20
    assert settings.job_timeout == 3600.0
    assert settings.expected_seconds == 150.0
    assert settings.handlers == []


def test_defaults_beyond_the_design_table() -> None:
    settings = load_settings(env={})
    assert settings.apiframe_webhook_field == "webhookUrl"
    assert settings.runbase_rate_window == 10.0
    assert settings.token_max_age == 172800.0
    assert settings.require_signature is False


def test_load_settings_reads_os_environ_when_no_env_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECEIVER_SECRET", "from-os-environ")
    assert load_settings().secret == "from-os-environ"


def test_every_variable_is_read(tmp_path: Path) -> None:
    config = _write(tmp_path / "handlers.toml", "")
    env = {
        "RECEIVER_SECRET": "s3cret-value",
        "RECEIVER_OLD_SECRETS": "old-one,old-two",
        "RECEIVER_PUBLIC_URL": "https://hooks.example.com/",
        "RECEIVER_DATABASE_URL": "sqlite:///var/jobs.db",
        "RECEIVER_CONFIG": config,
        "RECEIVER_ADMIN_TOKEN": "admin-token",
        "APIFRAME_API_KEY": "af-key",
        "APIFRAME_BASE_URL": "http://127.0.0.1:9001/",
        "APIFRAME_WEBHOOK_FIELD": "webhook_url",
        "RUNBASE_API_KEY": "rb-key",
        "RUNBASE_BASE_URL": "http://127.0.0.1:9002/",
        "RUNBASE_RATE_LIMIT": "7",
        "RUNBASE_RATE_WINDOW": "2.5",
        "RECEIVER_JOB_TIMEOUT": "120",
        "RECEIVER_EXPECTED_SECONDS": "12.5",
        "RECEIVER_TOKEN_MAX_AGE": "600",
        "RECEIVER_REQUIRE_SIGNATURE": "true",
        "RECEIVER_LISTEN": "no",
    }
    assert load_settings(env=env) == Settings(
        secret="s3cret-value",
        old_secrets=("old-one", "old-two"),
        public_url="https://hooks.example.com",
        database_url="sqlite:///var/jobs.db",
        config_path=config,
        admin_token="admin-token",
        apiframe_api_key="af-key",
        apiframe_base_url="http://127.0.0.1:9001",
        apiframe_webhook_field="webhook_url",
        runbase_api_key="rb-key",
        runbase_base_url="http://127.0.0.1:9002",
        runbase_rate_limit=7,
        runbase_rate_window=2.5,
        job_timeout=120.0,
        expected_seconds=12.5,
        token_max_age=600.0,
        require_signature=True,
        listen=False,
        handlers=[],
    )


@pytest.mark.parametrize(
    ("raw", "split"),
    [
        ("", ()),
        ("one", ("one",)),
        ("one,two", ("one", "two")),
        (" one , two ,", ("one", "two")),
        (",,", ()),
    ],
)
def test_old_secrets_are_split_on_commas(raw: str, split: tuple[str, ...]) -> None:
    assert load_settings(env={"RECEIVER_OLD_SECRETS": raw}).old_secrets == split


@pytest.mark.parametrize(
    ("raw", "flag"),
    [("1", True), ("yes", True), ("TRUE", True), ("0", False), ("No", False), ("false", False)],
)
def test_require_signature_is_a_flag(raw: str, flag: bool) -> None:
    assert load_settings(env={"RECEIVER_REQUIRE_SIGNATURE": raw}).require_signature is flag


@pytest.mark.parametrize("raw", ["ture", "on", "enabled", "2"])
def test_a_flag_that_is_not_a_boolean_is_refused(raw: str) -> None:
    # "ture" once left signature checks off without a word.
    with pytest.raises(SettingsError, match=r"RECEIVER_REQUIRE_SIGNATURE must be one of true, false"):
        load_settings(env={"RECEIVER_REQUIRE_SIGNATURE": raw})


def test_a_toml_boolean_is_a_flag(tmp_path: Path) -> None:
    path = tmp_path / "receiver.toml"
    path.write_text("[settings]\nrequire_signature = true\n")
    assert load_settings(env={"RECEIVER_CONFIG": str(path)}).require_signature is True


def test_an_unknown_settings_key_names_the_closest(tmp_path: Path) -> None:
    path = tmp_path / "receiver.toml"
    path.write_text("[settings]\nrequire_signatures = true\n")
    with pytest.raises(
        SettingsError, match=r"unknown key 'require_signatures' \(did you mean 'require_signature'\?\)"
    ):
        load_settings(env={"RECEIVER_CONFIG": str(path)})


def test_an_unknown_table_names_the_closest(tmp_path: Path) -> None:
    path = tmp_path / "receiver.toml"
    path.write_text('[[handler]]\nname = "log"\ntype = "log"\n')
    with pytest.raises(SettingsError, match=r"unknown table 'handler' \(did you mean 'handlers'\?\)"):
        load_settings(env={"RECEIVER_CONFIG": str(path)})


@pytest.mark.parametrize("url", ["example.com", "ftp://example.com", "http://", "/hooks"])
def test_public_url_must_be_absolute_http(url: str) -> None:
    with pytest.raises(SettingsError, match=r"RECEIVER_PUBLIC_URL must be an absolute http"):
        load_settings(env={"RECEIVER_PUBLIC_URL": url})


def test_an_api_key_holding_a_space_is_refused_without_echoing_it() -> None:
    with pytest.raises(SettingsError, match=r"^RUNBASE_API_KEY holds a character") as caught:
        load_settings(env={"RUNBASE_API_KEY": "rb secretpart"})
    assert "secretpart" not in str(caught.value)


def test_listening_for_other_processes_is_on_unless_turned_off() -> None:
    assert load_settings(env={}).listen is True
    assert load_settings(env={"RECEIVER_LISTEN": "0"}).listen is False


@pytest.mark.parametrize(
    "name",
    [
        "RUNBASE_RATE_LIMIT",
        "RUNBASE_RATE_WINDOW",
        "RECEIVER_JOB_TIMEOUT",
        "RECEIVER_EXPECTED_SECONDS",
        "RECEIVER_TOKEN_MAX_AGE",
    ],
)
@pytest.mark.parametrize("raw", ["abc", "0", "-5", "1e", "10s"])
def test_numbers_are_validated_and_the_error_names_the_variable(name: str, raw: str) -> None:
    assert name in _refusal({name: raw})


@pytest.mark.parametrize("name", ["RECEIVER_JOB_TIMEOUT", "RUNBASE_RATE_LIMIT"])
@pytest.mark.parametrize("raw", ["nan", "inf"])
def test_nan_and_infinity_are_not_numbers_of_seconds_or_requests(name: str, raw: str) -> None:
    # DESIGN: a user's mistake is one clear line, never a traceback (float() takes "nan" and "inf").
    assert name in _refusal({name: raw})


@pytest.mark.parametrize("raw", ["0.5", "2.5"])
def test_rate_limit_is_a_whole_number_of_requests(raw: str) -> None:
    # int(0.5) == 0 would otherwise reach LocalBudget, whose plain ValueError the CLI does not catch.
    assert "RUNBASE_RATE_LIMIT" in _refusal({"RUNBASE_RATE_LIMIT": raw})


def test_rate_limit_written_as_a_float_is_taken() -> None:
    assert load_settings(env={"RUNBASE_RATE_LIMIT": "20.0"}).runbase_rate_limit == 20


def test_empty_variables_count_as_unset() -> None:
    settings = load_settings(env={"RECEIVER_SECRET": "", "RUNBASE_RATE_LIMIT": "", "RECEIVER_PUBLIC_URL": ""})
    assert settings.secret is None
    assert settings.runbase_rate_limit == 20
    assert settings.public_url == "http://127.0.0.1:8000"


def test_require_secret_and_api_key_name_what_is_missing() -> None:
    settings = load_settings(env={})
    with pytest.raises(SettingsError, match="RECEIVER_SECRET"):
        settings.require_secret()
    with pytest.raises(SettingsError, match="APIFRAME_API_KEY"):
        settings.api_key("apiframe")
    with pytest.raises(SettingsError, match="RUNBASE_API_KEY"):
        settings.api_key("runbase")


def test_secrets_lists_every_secret_value() -> None:
    env = {
        "RECEIVER_SECRET": "s1-current",
        "RECEIVER_OLD_SECRETS": "s2-old",
        "RECEIVER_ADMIN_TOKEN": "admin-tok",
        "APIFRAME_API_KEY": "af-key",
        "RUNBASE_API_KEY": "rb-key",
    }
    assert sorted(load_settings(env=env).secrets()) == sorted(env.values())


def test_toml_handlers_and_variable_expansion(tmp_path: Path) -> None:
    config = _write(
        tmp_path / "receiver.toml",
        """
[[handlers]]
name = "team-slack"
type = "slack"
events = ["job.succeeded"]
webhook_url = "${SLACK_WEBHOOK_URL}"

[[handlers]]
name = "archive"
type = "storage"
target = "s3://${BUCKET}/videos/${BUCKET}/"
max_attempts = 3
""",
    )
    env = {"RECEIVER_CONFIG": config, "SLACK_WEBHOOK_URL": "https://hooks.slack.test/T/B/x", "BUCKET": "b1"}
    settings = load_settings(env=env)
    assert settings.config_path == config
    assert settings.handlers == [
        {
            "name": "team-slack",
            "type": "slack",
            "events": ["job.succeeded"],
            "webhook_url": "https://hooks.slack.test/T/B/x",
        },
        {"name": "archive", "type": "storage", "target": "s3://b1/videos/b1/", "max_attempts": 3},
    ]


def test_receiver_toml_in_the_working_directory_is_the_default(tmp_path: Path) -> None:
    _write(tmp_path / "receiver.toml", '[[handlers]]\nname = "log"\ntype = "log"\n')
    settings = load_settings(env={})
    assert settings.config_path == "receiver.toml"
    assert settings.handlers == [{"name": "log", "type": "log"}]


def test_settings_table_fills_in_and_the_environment_wins(tmp_path: Path) -> None:
    config = _write(
        tmp_path / "c.toml",
        """
[settings]
public_url = "https://from-file.example.com"
expected_seconds = 90
runbase_rate_limit = 5
database_url = "sqlite:///${DATA}/jobs.db"
""",
    )
    env = {"RECEIVER_CONFIG": config, "DATA": "/srv", "RUNBASE_RATE_LIMIT": "9"}
    settings = load_settings(env=env)
    assert settings.public_url == "https://from-file.example.com"
    assert settings.expected_seconds == 90.0
    assert settings.database_url == "sqlite:////srv/jobs.db"
    assert settings.runbase_rate_limit == 9


def test_settings_table_takes_every_setting_by_its_lower_case_name(tmp_path: Path) -> None:
    config = _write(
        tmp_path / "c.toml",
        """
[settings]
secret = "file-secret"
old_secrets = "a-old, b-old"
token_max_age = 600
require_signature = true
runbase_base_url = "http://127.0.0.1:9002/"
""",
    )
    settings = load_settings(env={"RECEIVER_CONFIG": config})
    assert settings.secret == "file-secret"
    assert settings.old_secrets == ("a-old", "b-old")
    assert settings.token_max_age == 600.0
    assert settings.require_signature is True
    assert settings.runbase_base_url == "http://127.0.0.1:9002"


def test_bad_number_in_the_settings_table_names_the_variable(tmp_path: Path) -> None:
    config = _write(tmp_path / "c.toml", '[settings]\njob_timeout = "soon"\n')
    assert "RECEIVER_JOB_TIMEOUT" in _refusal({"RECEIVER_CONFIG": config})


def test_missing_variable_in_the_file_is_named(tmp_path: Path) -> None:
    config = _write(
        tmp_path / "c.toml", '[[handlers]]\nname = "s"\ntype = "slack"\nwebhook_url = "${NOPE}"\n'
    )
    message = _refusal({"RECEIVER_CONFIG": config})
    assert "${NOPE}" in message
    assert config in message


def test_bad_toml_is_one_line(tmp_path: Path) -> None:
    config = _write(tmp_path / "c.toml", "[[handlers]\nname = \n")
    message = _refusal({"RECEIVER_CONFIG": config})
    assert "not valid TOML" in message
    assert config in message


def test_unreadable_config_names_the_variable(tmp_path: Path) -> None:
    message = _refusal({"RECEIVER_CONFIG": str(tmp_path / "missing.toml")})
    assert "RECEIVER_CONFIG" in message


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ('handlers = "log"\n', "handlers"),
        ("handlers = [1, 2]\n", "handlers"),
        ('settings = "x"\n', "settings"),
    ],
)
def test_handlers_and_settings_must_be_tables(tmp_path: Path, text: str, what: str) -> None:
    config = _write(tmp_path / "c.toml", text)
    assert what in _refusal({"RECEIVER_CONFIG": config})


def test_secret_value_is_not_echoed_in_a_number_error() -> None:
    message = _refusal({"RECEIVER_SECRET": "top-secret-value", "RECEIVER_JOB_TIMEOUT": "soon"})
    assert "top-secret-value" not in message


def test_failover_settings_default_to_every_provider_in_the_registry_order() -> None:
    settings = load_settings(env={})
    assert settings.provider is None
    assert settings.provider_order == ("apiframe", "runbase")
    assert settings.failover_wait == 60.0


def test_provider_order_from_the_environment_or_a_list_in_the_file(tmp_path: Path) -> None:
    env = {"RECEIVER_PROVIDER_ORDER": " runbase , apiframe,runbase", "RECEIVER_FAILOVER_WAIT": "0"}
    settings = load_settings(env=env)
    assert settings.provider_order == ("runbase", "apiframe")
    assert settings.failover_wait == 0.0
    config = _write(tmp_path / "r.toml", '[settings]\nprovider_order = ["runbase"]\nprovider = "auto"\n')
    from_file = load_settings(env={"RECEIVER_CONFIG": config})
    assert (from_file.provider_order, from_file.provider) == (("runbase",), "auto")


@pytest.mark.parametrize(
    ("text", "named"),
    [("midjourney", "unknown provider 'midjourney'"), (",", "at least one provider")],
)
def test_a_bad_provider_order_is_one_line_naming_the_variable(text: str, named: str) -> None:
    message = _refusal({"RECEIVER_PROVIDER_ORDER": text})
    assert message.startswith("RECEIVER_PROVIDER_ORDER")
    assert named in message


def test_a_negative_failover_wait_is_refused() -> None:
    assert "RECEIVER_FAILOVER_WAIT" in _refusal({"RECEIVER_FAILOVER_WAIT": "-1"})


def test_postgres_pool_size_is_a_whole_number_of_connections() -> None:
    assert load_settings(env={}).pg_pool_size == 10
    assert load_settings(env={"RECEIVER_PG_POOL_SIZE": "32"}).pg_pool_size == 32
    for raw in ("0", "2.5", "many"):
        assert "RECEIVER_PG_POOL_SIZE" in _refusal({"RECEIVER_PG_POOL_SIZE": raw})
