"""Settings from the environment and the optional TOML file; the one place variables are read."""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from receiver.providers import apiframe, runbase
from receiver.providers.registry import NAMES
from receiver.providers.registry import get as provider


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it (never its value if secret)."""


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Settings:
    secret: str | None = None
    old_secrets: tuple[str, ...] = ()
    public_url: str = "http://127.0.0.1:8000"
    database_url: str = "sqlite:///receiver.db"
    config_path: str | None = None
    admin_token: str | None = None
    apiframe_api_key: str | None = None
    apiframe_base_url: str = apiframe.DEFAULT_BASE_URL
    apiframe_webhook_field: str = "webhookUrl"
    runbase_api_key: str | None = None
    runbase_base_url: str = runbase.DEFAULT_BASE_URL
    runbase_rate_limit: int = 20
    runbase_rate_window: float = 10.0
    job_timeout: float = 3600.0
    expected_seconds: float = 150.0
    # How long a submit may wait for the Runbase budget before it is queued for the worker instead.
    submit_wait: float = 2.0
    # A job still `pending` this long after its submit began lost its process: longer than a provider
    # client can spend on one submit (4 attempts of 30 s plus waits of up to 60 s between them).
    submit_lease: float = 600.0
    worker_stale_after: float = 120.0
    store_timeout: float = 5.0
    pg_pool_size: int = 10  # most connections one process opens to PostgreSQL
    token_max_age: float = 172800.0
    require_signature: bool = False
    listen: bool = True
    # Where a submit goes when it names no provider: a name, "auto", or a comma-separated list.
    provider: str | None = None
    # The providers "auto" tries, in this order: a submit refused for a reason the next may not share
    # (402, a 5xx or unsent request, 429s beyond `failover_wait`) goes to the next one.
    provider_order: tuple[str, ...] = NAMES
    # Seconds 429s and the rate budget may hold a job back, from its creation, before it fails over.
    failover_wait: float = 60.0
    # A day's spending limit per provider, in its cost unit (registry), by UTC day; None: none.
    daily_budgets: Mapping[str, float] = field(default_factory=dict)
    # What a job whose cost is not known yet counts for against the budget, per provider; without
    # one, the provider's last reported cost.
    cost_estimates: Mapping[str, float] = field(default_factory=dict)
    handlers: list[dict[str, Any]] = field(default_factory=list)

    def require_secret(self) -> str:
        if not self.secret:
            raise SettingsError("RECEIVER_SECRET is not set (it signs the per-job webhook URLs)")
        return self.secret

    def api_key(self, name: str) -> str:
        key = provider(name).api_key(self)
        if not key:
            raise SettingsError(f"{name.upper()}_API_KEY is not set")
        return key

    def base_url(self, name: str) -> str:
        return provider(name).base_url(self)

    def secrets(self) -> list[str]:
        """Every value that must never reach a log line or an error message."""
        values = [self.secret, self.admin_token, self.apiframe_api_key, self.runbase_api_key]
        return [v for v in (*values, *self.old_secrets) if v]


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    config_path = env.get("RECEIVER_CONFIG") or ("receiver.toml" if Path("receiver.toml").exists() else None)
    handlers: list[dict[str, Any]] = []
    file_settings: dict[str, Any] = {}
    if config_path:
        handlers, file_settings = _read_config(config_path, env)
    read = _Reader(env, file_settings)
    old = read.text("RECEIVER_OLD_SECRETS") or ""
    settings = Settings(
        secret=read.text("RECEIVER_SECRET"),
        old_secrets=tuple(s.strip() for s in old.split(",") if s.strip()),
        public_url=read.url("RECEIVER_PUBLIC_URL", Settings.public_url),
        database_url=read.text("RECEIVER_DATABASE_URL") or Settings.database_url,
        config_path=config_path,
        admin_token=read.text("RECEIVER_ADMIN_TOKEN"),
        apiframe_api_key=read.key("APIFRAME_API_KEY"),
        apiframe_base_url=read.url("APIFRAME_BASE_URL", Settings.apiframe_base_url),
        apiframe_webhook_field=read.text("APIFRAME_WEBHOOK_FIELD") or Settings.apiframe_webhook_field,
        runbase_api_key=read.key("RUNBASE_API_KEY"),
        runbase_base_url=read.url("RUNBASE_BASE_URL", Settings.runbase_base_url),
        runbase_rate_limit=int(read.number("RUNBASE_RATE_LIMIT", Settings.runbase_rate_limit, whole=True)),
        runbase_rate_window=read.number("RUNBASE_RATE_WINDOW", Settings.runbase_rate_window),
        job_timeout=read.number("RECEIVER_JOB_TIMEOUT", Settings.job_timeout),
        expected_seconds=read.number("RECEIVER_EXPECTED_SECONDS", Settings.expected_seconds),
        submit_wait=read.number("RECEIVER_SUBMIT_WAIT", Settings.submit_wait),
        submit_lease=read.number("RECEIVER_SUBMIT_LEASE", Settings.submit_lease),
        worker_stale_after=read.number("RECEIVER_WORKER_STALE_AFTER", Settings.worker_stale_after),
        store_timeout=read.number("RECEIVER_STORE_TIMEOUT", Settings.store_timeout),
        pg_pool_size=int(read.number("RECEIVER_PG_POOL_SIZE", Settings.pg_pool_size, whole=True)),
        token_max_age=read.number("RECEIVER_TOKEN_MAX_AGE", Settings.token_max_age),
        require_signature=read.flag("RECEIVER_REQUIRE_SIGNATURE", Settings.require_signature),
        listen=read.flag("RECEIVER_LISTEN", Settings.listen),
        provider=read.text("RECEIVER_PROVIDER"),
        provider_order=read.providers("RECEIVER_PROVIDER_ORDER") or Settings.provider_order,
        failover_wait=read.number("RECEIVER_FAILOVER_WAIT", Settings.failover_wait, zero=True),
        daily_budgets=read.per_provider("DAILY_BUDGET"),
        cost_estimates=read.per_provider("COST_ESTIMATE"),
        handlers=handlers,
    )
    read.check_unknown(config_path)
    return settings


class _Reader:
    """A variable from the environment, else from the file's [settings] table under its lower-case name
    without the RECEIVER_ prefix (`RECEIVER_JOB_TIMEOUT` -> `job_timeout`)."""

    def __init__(self, env: Mapping[str, str], file_settings: dict[str, Any]) -> None:
        self.env = env
        self.file_settings = file_settings
        self.known: set[str] = set()  # the [settings] keys asked for: any other key is a typo

    def raw(self, name: str) -> Any:
        key = name.lower().removeprefix("receiver_")
        self.known.add(key)
        return self.env.get(name) or self.file_settings.get(key)

    def text(self, name: str) -> str | None:
        value = self.raw(name)
        if value is None:
            return None
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    def flag(self, name: str, default: bool) -> bool:
        raw = self.text(name)
        if raw is None or raw == "":
            return default
        value = raw.strip().lower()
        if value not in _TRUE + _FALSE:
            raise SettingsError(f"{name} must be one of true, false, 1, 0, yes, no; got {raw!r}")
        return value in _TRUE

    def check_unknown(self, path: str | None) -> None:
        """A key of the file's [settings] table that no setting reads is an error, with the closest
        valid name: a typo must not silently leave a default (say, signature checks off) in force."""
        for key in self.file_settings:
            if key not in self.known:
                raise SettingsError(
                    f"{path}: [settings] has an unknown key {key!r}{_closest(key, self.known)}"
                )

    def key(self, name: str) -> str | None:
        """An API key: it travels in an HTTP header, so it must be printable ASCII without spaces
        (the message never echoes the key)."""
        value = (self.text(name) or "").strip()
        if value and not all("!" <= char <= "~" for char in value):
            raise SettingsError(
                f"{name} holds a character an HTTP header cannot carry (a space, a line break or "
                "non-ASCII); copy the key again"
            )
        return value or None

    def url(self, name: str, default: str) -> str:
        value = (self.text(name) or default).strip().rstrip("/")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SettingsError(f"{name} must be an absolute http:// or https:// URL, got {value!r}")
        return value

    def providers(self, name: str) -> tuple[str, ...]:
        """Provider names: a comma-separated string, or a list in the file; each must be known."""
        raw: Any = self.raw(name)
        if raw is None or raw == "":
            return ()
        items = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise SettingsError(f"{name} must be a list of provider names")
        try:
            names = tuple(dict.fromkeys(provider(item.strip()).name for item in items if item.strip()))
        except ValueError as exc:
            raise SettingsError(f"{name}: {exc}") from None
        if not names:
            raise SettingsError(f"{name} must name at least one provider")
        return names

    def per_provider(self, suffix: str) -> dict[str, float]:
        """`APIFRAME_<suffix>`, `RUNBASE_<suffix>`: a number (0 or more) for each provider that sets one."""
        found = {}
        for name in NAMES:
            value = self.number(f"{name.upper()}_{suffix}", math.nan, zero=True)
            if not math.isnan(value):
                found[name] = value
        return found

    def number(self, name: str, default: float, *, whole: bool = False, zero: bool = False) -> float:
        raw = self.text(name)
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a number, got {raw!r}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
            least = "0 or more" if zero else "greater than 0"
            raise SettingsError(f"{name} must be a finite number {least}, got {raw!r}")
        if whole and (not value.is_integer() or value < 1):
            raise SettingsError(f"{name} must be a whole number of at least 1, got {raw!r}")
        return value


_TRUE = ("1", "true", "yes")
_FALSE = ("0", "false", "no")
TABLES = ("handlers", "settings")


def _closest(word: str, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, sorted(choices), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _read_config(path: str, env: Mapping[str, str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"RECEIVER_CONFIG: cannot read {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML: {exc}") from None
    data = _expand(data, env, path)
    for table in data:
        if table not in TABLES:
            raise SettingsError(f"{path}: unknown table {table!r}{_closest(table, TABLES)}")
    handlers = data.get("handlers", [])
    if not isinstance(handlers, list) or not all(isinstance(h, dict) for h in handlers):
        raise SettingsError(f"{path}: 'handlers' must be an array of tables ([[handlers]])")
    settings = data.get("settings", {})
    if not isinstance(settings, dict):
        raise SettingsError(f"{path}: 'settings' must be a table")
    return handlers, settings


def _expand(value: Any, env: Mapping[str, str], path: str) -> Any:
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in env:
                raise SettingsError(f"{path}: ${{{name}}} is used but the variable is not set")
            return env[name]

        return _VAR.sub(replace, value)
    if isinstance(value, list):
        return [_expand(v, env, path) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, env, path) for k, v in value.items()}
    return value
