"""`database`: one row per event, keyed by event id, in SQLite or PostgreSQL."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import anyio.to_thread

from handlers import ConfigError, PermanentError
from handlers._http import DeliveryFailed, LoopResource, excerpt
from receiver.clock import Clock, system_clock
from receiver.events import iso, parse_iso

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
JSON_COLUMNS = ("output_urls", "stored_urls", "metadata", "event")
COLUMNS = (
    "event_id",
    "event_type",
    "job_id",
    "provider",
    "status",
    "prompt",
    "output_urls",
    "stored_urls",
    "error_code",
    "error_message",
    "metadata",
    "created_at",
    "completed_at",
    "event",
    "recorded_at",
)


@dataclass(frozen=True)
class Row:
    """The row for one event; JSON columns hold Python values until a backend encodes them."""

    values: dict[str, Any]


def event_row(event: dict[str, Any], recorded_at: datetime) -> Row:
    job = event["job"]
    error = job.get("error") if isinstance(job.get("error"), dict) else None
    stored = _stored_urls(event)
    canonical = {k: v for k, v in event.items() if k != "reports"}  # same event, same row, on replays
    return Row(
        {
            "event_id": event["id"],
            "event_type": event["type"],
            "job_id": job["id"],
            "provider": job.get("provider"),
            "status": job.get("status"),
            "prompt": (job.get("request") or {}).get("prompt"),
            "output_urls": list(job.get("output_urls") or []),
            "stored_urls": stored,
            "error_code": error.get("code") if error else None,
            "error_message": error.get("message") if error else None,
            "metadata": job.get("metadata") or {},
            "created_at": parse_iso(job.get("created_at")),
            "completed_at": parse_iso(job.get("completed_at")),
            "event": canonical,
            "recorded_at": recorded_at,
        }
    )


def _stored_urls(event: dict[str, Any]) -> list[str] | None:
    """URLs reported by storage handlers that ran first; None (keep what a row has) when none did."""
    found: list[str] | None = None
    for report in (event.get("reports") or {}).values():
        if isinstance(report, dict) and isinstance(report.get("stored_urls"), list):
            found = (found or []) + [u for u in report["stored_urls"] if isinstance(u, str)]
    return found


def check_table(table: object) -> str:
    if not isinstance(table, str) or not _IDENTIFIER.match(table):
        raise ConfigError(
            "key 'table': must be a plain SQL identifier (letters, digits, underscore; at most 63)"
        )
    return table


def create_sql(table: str, *, postgres: bool) -> list[str]:
    json_type, time_type = ("JSONB", "TIMESTAMPTZ") if postgres else ("TEXT", "TEXT")
    return [
        f"""CREATE TABLE IF NOT EXISTS "{table}" (
            event_id TEXT PRIMARY KEY,
            event_type TEXT NOT NULL,
            job_id TEXT NOT NULL,
            provider TEXT,
            status TEXT,
            prompt TEXT,
            output_urls {json_type},
            stored_urls {json_type},
            error_code TEXT,
            error_message TEXT,
            metadata {json_type},
            created_at {time_type},
            completed_at {time_type},
            event {json_type} NOT NULL,
            recorded_at {time_type} NOT NULL
        )""",
        f'CREATE INDEX IF NOT EXISTS "{table}_job_id" ON "{table}" (job_id)',
    ]


def upsert_sql(table: str, placeholder: str) -> str:
    """One statement for both databases: a replay updates the row and keeps stored_urls it lacks."""
    names = ", ".join(COLUMNS)
    values = ", ".join(placeholder for _ in COLUMNS)
    updates = ", ".join(
        f'{c} = COALESCE(excluded.{c}, "{table}".{c})' if c == "stored_urls" else f"{c} = excluded.{c}"
        for c in COLUMNS
        if c != "event_id"
    )
    return (
        f'INSERT INTO "{table}" ({names}) VALUES ({values}) '  # noqa: S608 - table name checked as an identifier
        f"ON CONFLICT (event_id) DO UPDATE SET {updates}"
    )


class Backend(Protocol):
    async def upsert(self, row: Row) -> None: ...

    async def aclose(self) -> None: ...


class SqliteBackend:
    """stdlib sqlite3 on one connection, used from worker threads one call at a time."""

    def __init__(self, path: str, table: str) -> None:
        self.path, self.table = path, table
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._sql = upsert_sql(table, "?")

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
            try:
                for statement in create_sql(self.table, postgres=False):
                    conn.execute(statement)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _upsert(self, row: Row) -> None:
        values = [
            json.dumps(v, ensure_ascii=False) if k in JSON_COLUMNS and v is not None else v
            for k, v in row.values.items()
        ]
        values = [iso(v) if isinstance(v, datetime) else v for v in values]
        with self._lock:
            self._connection().execute(self._sql, values)

    async def upsert(self, row: Row) -> None:
        try:
            await anyio.to_thread.run_sync(self._upsert, row)
        except sqlite3.OperationalError as exc:
            if any(s in str(exc) for s in ("no such column", "no column named", "has no column")):
                raise PermanentError(f"sqlite table {self.table!r} has another shape: {exc}") from None
            raise DeliveryFailed(f"sqlite: {exc}") from None

    def _close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self._close)


class PostgresBackend:
    """psycopg 3 async on one connection, opened on first use (creating the table) and reopened after
    a connection failure. psycopg serializes concurrent statements on a connection; upserts are short."""

    def __init__(self, url: str, table: str) -> None:
        try:
            import psycopg  # noqa: F401 - fail at start-up, not at the first event
        except ImportError:
            raise ConfigError(
                "key 'url': postgresql:// needs psycopg (pip install 'kling-receiver[postgres]')"
            ) from None
        self.url, self.table = url, table
        self._sql = upsert_sql(table, "%s")
        self._conn: LoopResource[Any] = LoopResource(self._open)

    async def _open(self, stack: AsyncExitStack) -> Any:
        import psycopg

        options: dict[str, Any] = {} if "connect_timeout" in self.url else {"connect_timeout": 10}
        conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True, **options)
        await stack.enter_async_context(conn)
        for statement in create_sql(self.table, postgres=True):
            with suppress(psycopg.errors.UniqueViolation):  # another replica made it just now
                await conn.execute(statement)
        return conn

    async def upsert(self, row: Row) -> None:
        import psycopg
        from psycopg.types.json import Jsonb

        values = [Jsonb(v) if k in JSON_COLUMNS and v is not None else v for k, v in row.values.items()]
        try:
            conn = await self._conn.get()
            await conn.execute(self._sql, values)
        except (psycopg.errors.ProgrammingError, psycopg.errors.DataError) as exc:
            raise PermanentError(f"postgresql table {self.table!r}: {type(exc).__name__}: {exc}") from None
        except psycopg.OperationalError as exc:
            with suppress(Exception):  # the connection is suspect: the next attempt opens a new one
                await self._conn.aclose()
            raise DeliveryFailed(f"postgresql: {type(exc).__name__}: {excerpt(str(exc))}") from None

    async def aclose(self) -> None:
        await self._conn.aclose()


def open_backend(url: object, table: str) -> Backend:
    if not isinstance(url, str):
        raise ConfigError("key 'url': must be sqlite:///path or postgresql://...")
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        if not path:
            raise ConfigError("key 'url': sqlite:/// needs a file path")
        return SqliteBackend(path, table)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresBackend(url, table)
    scheme = url.split(":", 1)[0] if ":" in url else url[:20]
    raise ConfigError(f"key 'url': scheme {scheme!r} is not supported (sqlite:/// or postgresql://)")


class DatabaseHandler:
    """Keys: `url` (`sqlite:///path`, `postgresql://...`), optional `table` (default generation_events).

    Upserts one row per event id, creating the table on first use; reports `{"table", "event_id"}`.
    """

    def __init__(self, url: str, table: str = "generation_events", *, clock: Clock = system_clock) -> None:
        self.table = check_table(table)
        self.clock = clock
        self._backend = open_backend(url, self.table)

    async def handle(self, event: dict[str, Any]) -> dict[str, Any] | None:
        await self._backend.upsert(event_row(event, self.clock()))
        return {"table": self.table, "event_id": event["id"]}

    async def aclose(self) -> None:
        await self._backend.aclose()
