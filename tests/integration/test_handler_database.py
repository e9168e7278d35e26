"""`database` on a real SQLite file and on this machine's PostgreSQL: one row per event, whatever happens."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

from handlers import PermanentError
from handlers._http import DeliveryFailed
from handlers.database import DatabaseHandler
from receiver.events import Job, JobError, JobStatus, make_event

pytestmark = pytest.mark.anyio
PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

Rows = Callable[[], list[dict[str, Any]]]


def succeeded(job_id: str = "job_db1") -> dict[str, Any]:
    job = Job(
        id=job_id,
        provider="runbase",
        status=JobStatus.SUCCEEDED,
        request={"prompt": "a koi pond in the rain", "mode": "pro"},
        metadata={"campaign": "spring"},
        output_urls=["https://cdn.runbase.net/o/1.mp4"],
        created_at=START,
        completed_at=START + timedelta(seconds=150),
        completed_via="poll",
    )
    return make_event(job, "evt_" + job_id, now=START)


def failed(job_id: str = "job_db2") -> dict[str, Any]:
    job = Job(
        id=job_id,
        provider="apiframe",
        status=JobStatus.FAILED,
        request={"prompt": "a koi pond at night"},
        error=JobError("timeout", "no final status within 3600 s"),
        created_at=START,
        completed_at=START + timedelta(hours=1),
    )
    return make_event(job, "evt_" + job_id, now=START)


@pytest.fixture
def sqlite_db(tmp_path: Path) -> tuple[str, str, Rows]:
    path = tmp_path / "sub" / "events.db"

    def rows() -> list[dict[str, Any]]:
        with sqlite3.connect(path) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute("SELECT * FROM generation_events ORDER BY event_id")]

    return f"sqlite:///{path}", "generation_events", rows


@pytest.fixture
def postgres_db() -> Iterator[tuple[str, str, Rows]]:
    try:
        psycopg.connect(PG_URL, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {PG_URL} is unreachable under CI: {exc}")
        pytest.skip(f"PostgreSQL at {PG_URL} is unreachable and CI is unset: {exc}")
    table = f"events_{uuid.uuid4().hex[:12]}"

    def rows() -> list[dict[str, Any]]:
        with psycopg.connect(PG_URL) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            cur.execute(f'SELECT * FROM "{table}" ORDER BY event_id')
            return cur.fetchall()

    yield PG_URL, table, rows
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP TABLE IF EXISTS "{table}"')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> tuple[str, str, Rows]:
    fixture: tuple[str, str, Rows] = request.getfixturevalue(f"{request.param}_db")
    return fixture


def decoded(value: Any) -> Any:
    """JSON columns come back as text from SQLite and as Python values from PostgreSQL's JSONB."""
    return json.loads(value) if isinstance(value, str) else value


async def test_three_deliveries_and_a_replay_leave_one_row(database: tuple[str, str, Rows]) -> None:
    url, table, rows = database
    handler = DatabaseHandler(url, table=table)
    event = succeeded()
    with_report = {**event, "reports": {"copy": {"stored_urls": ["s3://videos/job_db1/0.mp4"]}}}
    try:
        assert await handler.handle(with_report) == {"table": table, "event_id": "evt_job_db1"}
        async with anyio.create_task_group() as group:  # concurrent re-deliveries of the same event
            for _ in range(2):
                group.start_soon(handler.handle, event)
        await handler.handle(event)  # the replay, without the storage report this time
    finally:
        await handler.aclose()
    (row,) = rows()
    assert row["event_id"] == "evt_job_db1"
    assert (row["event_type"], row["job_id"], row["provider"], row["status"]) == (
        "job.succeeded",
        "job_db1",
        "runbase",
        "succeeded",
    )
    assert row["prompt"] == "a koi pond in the rain"
    assert decoded(row["output_urls"]) == ["https://cdn.runbase.net/o/1.mp4"]
    assert decoded(row["stored_urls"]) == ["s3://videos/job_db1/0.mp4"]  # kept through the replay
    assert decoded(row["metadata"]) == {"campaign": "spring"}
    assert decoded(row["event"]) == event
    assert (row["error_code"], row["error_message"]) == (None, None)
    assert row["recorded_at"] is not None


async def test_the_table_is_created_on_first_use_and_rows_add_up(database: tuple[str, str, Rows]) -> None:
    url, table, rows = database
    handler = DatabaseHandler(url, table=table)
    try:
        await handler.handle(failed())
        await handler.handle(succeeded())
    finally:
        await handler.aclose()
    first, second = rows()
    assert (first["event_id"], first["error_code"], first["error_message"]) == (
        "evt_job_db1",
        None,
        None,
    )
    assert (second["event_id"], second["status"], second["error_code"]) == (
        "evt_job_db2",
        "failed",
        "timeout",
    )
    assert second["error_message"] == "no final status within 3600 s"
    assert decoded(second["stored_urls"]) is None


async def test_postgres_uses_jsonb_and_timestamps(postgres_db: tuple[str, str, Rows]) -> None:
    url, table, rows = postgres_db
    handler = DatabaseHandler(url, table=table)
    try:
        await handler.handle(succeeded())
    finally:
        await handler.aclose()
    with psycopg.connect(PG_URL) as conn:
        types = dict(
            conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s",
                (table,),
            ).fetchall()
        )
    assert types["event"] == "jsonb"
    assert types["created_at"] == "timestamp with time zone"
    (row,) = rows()
    assert row["completed_at"] - row["created_at"] == timedelta(seconds=150)


async def test_a_table_of_another_shape_is_a_permanent_error(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE generation_events (event_id TEXT PRIMARY KEY, note TEXT)")
    handler = DatabaseHandler(f"sqlite:///{path}")
    try:
        with pytest.raises(PermanentError, match="has another shape"):
            await handler.handle(succeeded())
    finally:
        await handler.aclose()


async def test_postgres_reconnects_after_losing_its_connection(postgres_db: tuple[str, str, Rows]) -> None:
    url, table, rows = postgres_db
    handler = DatabaseHandler(url, table=table)
    try:
        await handler.handle(failed())
        with psycopg.connect(PG_URL, autocommit=True) as admin:  # what a server restart looks like
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND application_name = '' AND query LIKE %s",
                (f'%"{table}"%',),
            )
        with pytest.raises(DeliveryFailed, match="postgresql: AdminShutdown: terminating connection"):
            await handler.handle(succeeded())
        await handler.handle(succeeded())  # the retry opens a new connection
    finally:
        await handler.aclose()
    assert [r["event_id"] for r in rows()] == ["evt_job_db1", "evt_job_db2"]


def test_each_tick_may_run_its_own_event_loop(database: tuple[str, str, Rows]) -> None:
    """`receiver tick` and serverless invocations call asyncio.run per round with the same handler."""
    url, table, rows = database
    handler = DatabaseHandler(url, table=table)
    asyncio.run(handler.handle(succeeded()))
    asyncio.run(handler.handle(failed()))
    asyncio.run(handler.aclose())
    assert len(rows()) == 2
