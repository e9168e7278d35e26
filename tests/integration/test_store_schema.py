"""Both stores' schemas, read back from the real databases, are equal in meaning: tables, columns, indexes
(with their predicates) and constraints; the worker's polling queries use the partial indexes; and a
SQLite file from the first schema is migrated with its data."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from receiver.config import SettingsError
from receiver.events import DeliveryStatus, Job, JobStatus
from receiver.store import HandlerRoute, SQLStore, Update, open_store
from receiver.store.queries import load
from tests.support.pg import fresh_schema

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

SQLITE_TYPES = {
    "TEXT": "text",
    "INTEGER": "integer",
    "REAL": "number",
    "TIMESTAMP TEXT": "time",
    "JSON TEXT": "json",
}
PG_TYPES = {
    "text": "text",
    "integer": "integer",
    "bigint": "integer",
    "double precision": "number",
    "timestamp with time zone": "time",
    "jsonb": "json",
    "json": "json",
}


@dataclass(frozen=True)
class Schema:
    """Tables as {table: {column: (type, not null, default)}}; indexes as {name: (table, columns, unique,
    predicate)}; foreign keys as (table, columns, referenced table, its columns, ON DELETE action)."""

    columns: dict[str, dict[str, tuple[str, bool, str | None]]]
    indexes: dict[str, tuple[str, tuple[str, ...], bool, str]]
    primary_keys: dict[str, tuple[str, ...]]
    foreign_keys: set[tuple[str, tuple[str, ...], str, tuple[str, ...], str]]


@pytest.fixture
async def sqlite_path(tmp_path: Path) -> Path:
    path = tmp_path / "jobs.db"
    await _opened(f"sqlite:///{path}")
    return path


@pytest.fixture
async def pg_store() -> AsyncIterator[str]:
    """A fresh PostgreSQL schema, migrated by the store."""
    with fresh_schema() as url:
        await _opened(url)
        yield url


async def _opened(url: str) -> None:
    store = open_store(url)
    await store.open()
    await store.close()


def _default(text: str | None) -> str | None:
    if text is None:
        return None
    text = re.sub(r"::[\w ]+$", "", text)
    return {"now()": "CURRENT_TIMESTAMP"}.get(text, text)


def _predicate(text: str | None) -> str:
    """One spelling for both: PostgreSQL prints `x IN (a, b)` as `x = ANY (ARRAY[a, b])`, adds casts
    and parentheses."""
    if not text:
        return ""
    text = re.sub(r"(\w+) = ANY \(ARRAY\[(.*?)\]\)", r"\1 IN (\2)", text)
    text = re.sub(r"::\w+", "", text)
    return " ".join(re.sub(r"[()]", " ", text).lower().split())


_INDEX = re.compile(
    r"CREATE (UNIQUE )?INDEX (\w+) ON (?:\w+\.)?(\w+)(?: USING btree)? \((.*?)\)(?: WHERE (.*))?$"
)


def _index(sql: str) -> tuple[str, tuple[str, tuple[str, ...], bool, str]]:
    match = _INDEX.match(" ".join(sql.split()))
    assert match, sql
    unique, name, table, columns, where = match.groups()
    return name, (table, tuple(c.strip() for c in columns.split(",")), bool(unique), _predicate(where))


def sqlite_schema(path: Path) -> Schema:
    conn = sqlite3.connect(path)
    try:
        master = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
        tables = [name for kind, name, _, _ in master if kind == "table" and not name.startswith("sqlite_")]
        triggers = {name for kind, name, _, _ in master if kind == "trigger"}
        columns: dict[str, dict[str, tuple[str, bool, str | None]]] = {}
        primary_keys: dict[str, tuple[str, ...]] = {}
        foreign_keys = set()
        for table in tables:
            info = conn.execute(f"PRAGMA table_info({table})").fetchall()
            columns[table] = {
                # seq is the rowid, copied by an insert trigger: SQLite's identity column
                name: (
                    SQLITE_TYPES[kind],
                    bool(notnull) or (pk == 1 and kind == "INTEGER"),
                    "identity" if name == "seq" and f"{table}_seq" in triggers else _default(default),
                )
                for _, name, kind, notnull, default, pk in info
            }
            primary_keys[table] = tuple(
                name for *_, name, _, _, _, pk in sorted(info, key=lambda r: r[5]) if pk
            )
            keys: dict[int, list[Any]] = {}
            for key_id, _, parent, child_column, parent_column, _, on_delete, _ in conn.execute(
                f"PRAGMA foreign_key_list({table})"
            ):
                keys.setdefault(key_id, [parent, [], [], on_delete])
                keys[key_id][1].append(child_column)
                keys[key_id][2].append(parent_column)
            foreign_keys |= {(table, tuple(c), p, tuple(pc), d) for p, c, pc, d in keys.values()}
        indexes = dict(_index(sql) for kind, _, _, sql in master if kind == "index" and sql)
        return Schema(columns, indexes, primary_keys, foreign_keys)
    finally:
        conn.close()


def pg_schema(url: str) -> Schema:
    with psycopg.connect(url) as conn:
        columns: dict[str, dict[str, tuple[str, bool, str | None]]] = {}
        for table, name, kind, nullable, default, identity in conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable, column_default, is_identity"
            " FROM information_schema.columns WHERE table_schema = current_schema()"
        ):
            columns.setdefault(table, {})[name] = (
                PG_TYPES[kind],
                nullable == "NO",
                "identity" if identity == "YES" else _default(default),
            )
        indexes = dict(
            _index(sql)
            for (sql,) in conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema()"
                " AND indexname NOT IN (SELECT conname FROM pg_constraint)"
            )
        )
        primary_keys: dict[str, tuple[str, ...]] = {}
        foreign_keys = set()
        for table, kind, definition in conn.execute(
            "SELECT conrelid::regclass::text, contype, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE connamespace = current_schema()::regnamespace AND contype IN ('p', 'f', 'u', 'c')"
        ):
            if kind == "p":
                (cols,) = re.fullmatch(r"PRIMARY KEY \((.*)\)", definition).groups()  # type: ignore[union-attr]
                primary_keys[table] = tuple(cols.split(", "))
                continue
            assert kind == "f", f"a constraint the comparison does not know: {definition}"
            child, parent, parent_cols, action = re.fullmatch(  # type: ignore[union-attr]
                r"FOREIGN KEY \((.*)\) REFERENCES (\w+)\((.*)\)(?: ON DELETE ([A-Z ]+))?", definition
            ).groups()
            foreign_keys.add(
                (
                    table,
                    tuple(child.split(", ")),
                    parent,
                    tuple(parent_cols.split(", ")),
                    action or "NO ACTION",
                )
            )
        return Schema(columns, indexes, primary_keys, foreign_keys)


@pytest.mark.postgres
@pytest.mark.anyio
async def test_both_stores_have_the_same_tables_and_columns(sqlite_path: Path, pg_store: str) -> None:
    sqlite, postgres = sqlite_schema(sqlite_path), pg_schema(pg_store)
    assert sorted(sqlite.columns) == [
        "receiver_budget_alerts",
        "receiver_budget_deliveries",
        "receiver_budget_keys",
        "receiver_budget_requests",
        "receiver_deliveries",
        "receiver_jobs",
        "receiver_schema_version",
    ]
    assert sqlite.columns == postgres.columns
    assert sqlite.columns["receiver_jobs"]["deadline_at"] == ("time", True, None)
    assert sqlite.columns["receiver_deliveries"]["after"] == ("json", True, "'[]'")


@pytest.mark.postgres
@pytest.mark.anyio
async def test_both_stores_have_the_same_indexes_with_the_same_predicates(
    sqlite_path: Path, pg_store: str
) -> None:
    sqlite, postgres = sqlite_schema(sqlite_path), pg_schema(pg_store)
    assert sqlite.indexes == postgres.indexes
    assert sqlite.indexes["receiver_jobs_deadline"] == (
        "receiver_jobs",
        ("deadline_at",),
        False,
        "completed_at is null",
    )
    assert sqlite.indexes["receiver_jobs_due_poll"][3] == "completed_at is null and next_poll_at is not null"


@pytest.mark.postgres
@pytest.mark.anyio
async def test_both_stores_have_the_same_constraints(sqlite_path: Path, pg_store: str) -> None:
    sqlite, postgres = sqlite_schema(sqlite_path), pg_schema(pg_store)
    assert sqlite.primary_keys == postgres.primary_keys
    assert sqlite.foreign_keys == postgres.foreign_keys
    assert sqlite.foreign_keys == {
        ("receiver_deliveries", ("job_id",), "receiver_jobs", ("id",), "CASCADE"),
        (
            "receiver_budget_deliveries",
            ("provider", "day", "level"),
            "receiver_budget_alerts",
            ("provider", "day", "level"),
            "CASCADE",
        ),
    }


def _plan_sqlite(path: Path, name: str, **params: Any) -> str:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("EXPLAIN QUERY PLAN " + load("sqlite").queries[name].sql, params).fetchall()
    finally:
        conn.close()
    return "\n".join(row[-1] for row in rows)


def _plan_postgres(url: str, name: str, **params: Any) -> str:
    with psycopg.connect(url) as conn:
        conn.execute("SET enable_seqscan = off")  # empty tables: ask whether the index can serve at all
        rows = conn.execute("EXPLAIN " + load("postgres").queries[name].sql, params).fetchall()
    return "\n".join(row[0] for row in rows)


PARTIAL = {
    "receiver_jobs_due_poll",
    "receiver_jobs_deadline",
    "receiver_deliveries_due",
    "receiver_jobs_succeeded",
    "receiver_budget_deliveries_due",
}
POLL_QUERIES = {
    "overdue_jobs": ({"now": "2026-01-01T12:00:00.000000Z", "limit": 10}, ["receiver_jobs_deadline"]),
    "claim_polls": (
        {
            "now": "2026-01-01T12:00:00.000000Z",
            "due_by": "2026-01-01T12:00:10.000000Z",
            "lease": "2026-01-01T12:05:00.000000Z",
            "limit": 10,
        },
        ["receiver_jobs_due_poll"],
    ),
    # The paced loop's read of every job in flight, whatever the history's size.
    "pending_polls": (
        {"now": "2026-01-01T12:00:00.000000Z", "due_by": "2026-01-01T12:10:00.000000Z", "limit": 50},
        ["receiver_jobs_due_poll"],
    ),
    "next_due": (
        {},
        [
            "receiver_jobs_due_poll",
            "receiver_deliveries_due",
            "receiver_jobs_deadline",
            "receiver_budget_deliveries_due",
        ],
    ),
    # The `budget` events owed: a retry, or one whose sender stopped.
    "claim_budget_deliveries": (
        {
            "now": "2026-01-01T12:00:00.000000Z",
            "lease": "2026-01-01T12:05:00.000000Z",
            "limit": 16,
        },
        ["receiver_budget_deliveries_due"],
    ),
    # The completion-time model's history: the newest successes, whatever the history's size.
    "completion_samples": ({"limit": 2000}, ["receiver_jobs_succeeded"]),
    # Its censored samples: the jobs still running, whatever the history's size.
    "running_samples": ({"limit": 2000}, ["receiver_jobs_due_poll"]),
}


# A claimed row is found again by its key (its job, its budget alert), and a delivery's predecessor by its
# job (the deliveries' key starts with the job's id).
BY_KEY = {
    "receiver_jobs_pkey",
    "receiver_budget_alerts_pkey",
    "receiver_budget_deliveries_pkey",
    "receiver_deliveries_pkey",
}


@pytest.mark.parametrize("name", sorted(POLL_QUERIES))
@pytest.mark.anyio
async def test_sqlite_serves_the_worker_round_from_partial_indexes(sqlite_path: Path, name: str) -> None:
    params, indexes = POLL_QUERIES[name]
    plan = _plan_sqlite(sqlite_path, name, **params)
    assert "SCAN receiver_jobs\n" not in plan + "\n"
    for index in indexes:
        assert f"INDEX {index}" in plan, plan


@pytest.mark.postgres
@pytest.mark.parametrize("name", sorted(POLL_QUERIES))
@pytest.mark.anyio
async def test_postgres_serves_the_worker_round_from_partial_indexes(pg_store: str, name: str) -> None:
    params, _ = POLL_QUERIES[name]
    plan = _plan_postgres(pg_store, name, **params)
    used = set(re.findall(r"using (\w+) on", plan.lower())) - BY_KEY
    assert "seq scan" not in plan.lower(), plan
    assert used, plan
    assert used <= PARTIAL, plan  # on empty tables either open-jobs index may serve a MIN


FIRST_SCHEMA_ROWS = [
    "INSERT INTO jobs (id, provider, provider_job_id, model, status, request, metadata, output_urls, error,"
    " progress, created_at, submitted_at, completed_at, completed_via, deadline_at, poll_count, event_id, event)"
    " VALUES ('job_done', 'runbase', 'rb_1', 'kling-3.0', 'succeeded', '{\"prompt\": \"a fox\"}', '{\"k\": \"v\"}',"
    " '[\"https://cdn.example.com/v.mp4\"]', NULL, 100, '2026-01-01T12:00:00.000000Z',"
    " '2026-01-01T12:00:01.000000Z', '2026-01-01T12:02:30.000000Z', 'poll', '2026-01-01T13:00:00.000000Z', 3,"
    ' \'evt_1\', \'{"id": "evt_1", "type": "job.succeeded"}\')',
    "INSERT INTO jobs (id, provider, provider_job_id, model, status, request, metadata, created_at,"
    " submitted_at, deadline_at, next_poll_at)"
    " VALUES ('job_open', 'runbase', 'rb_2', 'kling-3.0', 'submitted', '{\"prompt\": \"a cat\"}', '{}',"
    " '2026-01-01T12:00:00.000000Z', '2026-01-01T12:00:01.000000Z', '2026-01-01T13:00:00.000000Z',"
    " '2026-01-01T12:00:10.000000Z')",
    "INSERT INTO deliveries (job_id, handler, status, attempts, next_attempt_at, after, report)"
    " VALUES ('job_done', 'storage', 'delivered', 1, NULL, '[]', '{\"url\": \"s3://b/job_done/0.mp4\"}')",
    "INSERT INTO deliveries (job_id, handler, status, attempts, last_error, next_attempt_at, after)"
    " VALUES ('job_done', 'db', 'retrying', 2, 'boom', '2026-01-01T12:03:00.000000Z', '[\"storage\"]')",
]


def _first_schema_file(path: Path) -> None:
    """A database as receivers before the shared SQL left it: schema 1 in user_version, no version table."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in load("sqlite").migrations[1]:
            conn.execute(statement)
        for statement in FIRST_SCHEMA_ROWS:
            conn.execute(statement)
        conn.execute("PRAGMA user_version=1")
    finally:
        conn.close()


@pytest.mark.anyio
async def test_a_sqlite_file_from_the_first_schema_is_migrated_with_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _first_schema_file(path)
    store = open_store(f"sqlite:///{path}")
    assert isinstance(store, SQLStore)
    await store.open()
    try:
        done, open_job = await store.get_job("job_done"), await store.get_job("job_open")
        assert done is not None
        assert open_job is not None
        assert (done.status, done.completed_via, done.poll_count) == (JobStatus.SUCCEEDED, "poll", 3)
        assert done.output_urls == ["https://cdn.example.com/v.mp4"]
        assert (done.request, done.metadata) == ({"prompt": "a fox"}, {"k": "v"})
        assert [(d.handler, d.status, d.attempts) for d in done.deliveries] == [
            ("storage", DeliveryStatus.DELIVERED, 1),
            ("db", DeliveryStatus.RETRYING, 2),
        ]
        (due,) = await store.claim_due_deliveries(T0 + timedelta(minutes=5), 10, 60)
        assert (due.handler, due.event["id"], due.reports) == (
            "db",
            "evt_1",
            {"storage": {"url": "s3://b/job_done/0.mp4"}},
        )
        assert [job.id for job in await store.claim_due_polls(T0 + timedelta(minutes=1), 10, 60)] == [
            "job_open"
        ]
        await store.create_job(
            Job(id="job_new", provider="runbase", status=JobStatus.PENDING, request={}, created_at=T0), T0
        )
        assert [job.id for job in await store.list_jobs()] == ["job_new", "job_open", "job_done"]
        ended = await store.record(
            "job_open", Update(JobStatus.SUCCEEDED), "webhook", T0, lambda e: [HandlerRoute("log", ())]
        )
        assert ended.terminal
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        latest = load("sqlite").schema_version
        versions = conn.execute("SELECT version FROM receiver_schema_version").fetchall()
        assert versions == [(version,) for version in range(2, latest + 1)]
        assert conn.execute("PRAGMA user_version").fetchone() == (2,)
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("DELETE FROM receiver_jobs WHERE id = 'job_done'")
        assert conn.execute("SELECT job_id FROM receiver_deliveries").fetchall() == [("job_open",)]
        assert json.loads(conn.execute("SELECT event FROM receiver_jobs WHERE id = 'job_open'").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.anyio
async def test_a_sqlite_schema_newer_than_the_receiver_is_refused_in_one_line(sqlite_path: Path) -> None:
    conn = sqlite3.connect(sqlite_path, isolation_level=None)
    try:
        conn.execute("INSERT INTO receiver_schema_version (version) VALUES (99)")
    finally:
        conn.close()
    with pytest.raises(SettingsError, match=r"^RECEIVER_DATABASE_URL: database schema 99 is newer"):
        await _opened(f"sqlite:///{sqlite_path}")
