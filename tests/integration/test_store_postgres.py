"""The SQL store on PostgreSQL as replicas use it: two pools on one database never claim the same row, a job ends once
whoever records it, the schema is migrated once, and the URL's password never reaches a message."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from receiver.config import SettingsError
from receiver.events import Job, JobError, JobStatus
from receiver.store import HandlerRoute, Recorded, SQLStore, Update, open_store
from receiver.store.postgres import PostgresConnector
from receiver.store.queries import load
from tests.support.pg import fresh_schema

SCHEMA_VERSION = load("postgres").schema_version

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
DONE = Update(JobStatus.SUCCEEDED, output_urls=("https://cdn.example.com/v.mp4",))
FAILED = Update(JobStatus.FAILED, error=JobError("content_policy", "refused by the provider"))
PASSWORD = "s3cr@t-pw"
URL_WITH_PASSWORD = "postgresql://receiver:s3cr%40t-pw@127.0.0.1:1/jobs"


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_schema() as url:
        yield url


@pytest.fixture
async def two_stores(pg_url: str) -> AsyncIterator[tuple[SQLStore, SQLStore]]:
    """Two replicas: two stores, each with its own pool, on one database."""
    first, second = _store(pg_url), _store(pg_url)
    await first.open()
    await second.open()
    yield first, second
    await first.close()
    await second.close()


def _store(url: str) -> SQLStore:
    return SQLStore(PostgresConnector.from_url(url))


def routes(*names: str) -> Any:
    return lambda event: [HandlerRoute(name, ()) for name in names]


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def _create(store: SQLStore, job_id: str) -> None:
    job = Job(
        id=job_id, provider="runbase", status=JobStatus.PENDING, request={"prompt": "a fox"}, created_at=T0
    )
    await store.create_job(job, T0 + timedelta(hours=1))
    await store.mark_submitted(job_id, f"rb_{job_id}", _at(1), _at(10))


def _rows(url: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()


def test_open_store_takes_both_postgres_schemes() -> None:
    for url in (
        "postgresql://postgres@127.0.0.1:5432/test",
        "postgres://postgres@127.0.0.1/test?sslmode=disable",
    ):
        store = open_store(url)
        assert isinstance(store, SQLStore)
        assert isinstance(store.connector, PostgresConnector)


def test_without_psycopg_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "receiver.store.postgres")
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(SettingsError, match=r"pip install 'kling-receiver\[postgres\]'"):
        open_store("postgresql://postgres@127.0.0.1/test")


def test_a_malformed_url_is_a_settings_error_without_the_password() -> None:
    with pytest.raises(SettingsError, match="not a valid PostgreSQL URL") as caught:
        open_store(URL_WITH_PASSWORD + "?no_such_option=1")
    assert PASSWORD not in str(caught.value)
    assert "s3cr%40t-pw" not in str(caught.value)


@pytest.mark.anyio
async def test_an_unreachable_server_is_a_settings_error_without_the_password() -> None:
    store = open_store(URL_WITH_PASSWORD, timeout=0.3)  # it is tried again until the store timeout
    with pytest.raises(SettingsError, match="cannot use PostgreSQL") as caught:
        await store.open()
    assert PASSWORD not in str(caught.value)
    assert "s3cr%40t-pw" not in str(caught.value)
    assert URL_WITH_PASSWORD not in str(caught.value)


@pytest.mark.postgres
@pytest.mark.anyio
async def test_two_stores_opening_at_once_migrate_the_schema_once(pg_url: str) -> None:
    first, second = _store(pg_url), _store(pg_url)
    try:
        async with asyncio.TaskGroup() as group:  # unlike gather, a failure cancels the other open
            group.create_task(first.open())
            group.create_task(second.open())
    finally:
        await first.close()
        await second.close()
    versions = _rows(pg_url, "SELECT version FROM receiver_schema_version ORDER BY version")
    assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
    tables = _rows(pg_url, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1")
    assert tables == [
        ("receiver_budget_alerts",),
        ("receiver_budget_deliveries",),
        ("receiver_budget_keys",),
        ("receiver_budget_requests",),
        ("receiver_deliveries",),
        ("receiver_jobs",),
        ("receiver_schema_version",),
    ]


@pytest.mark.postgres
@pytest.mark.anyio
async def test_a_schema_newer_than_the_receiver_is_refused(pg_url: str) -> None:
    store = _store(pg_url)
    await store.open()
    await store.close()
    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO receiver_schema_version (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(SettingsError, match=f"schema {SCHEMA_VERSION + 1} is newer"):
        await _store(pg_url).open()


@pytest.mark.postgres
@pytest.mark.anyio
async def test_columns_are_native_postgres_types(two_stores: tuple[SQLStore, SQLStore], pg_url: str) -> None:
    types = dict(
        _rows(
            pg_url,
            "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = current_schema()",
        )
    )
    assert types["receiver_jobs.created_at"] == "timestamp with time zone"
    assert types["receiver_jobs.request"] == "jsonb"
    assert types["receiver_jobs.event"] == "json"
    assert types["receiver_deliveries.after"] == "jsonb"
    assert types["receiver_deliveries.report"] == "jsonb"


@pytest.mark.postgres
@pytest.mark.anyio
async def test_times_come_back_in_utc_whatever_the_session_time_zone(pg_url: str) -> None:
    store = _store(pg_url + "%20-cTimeZone%3DAsia%2FTokyo")
    await store.open()
    try:
        await _create(store, "job_1")
        job = await store.get_job("job_1")
    finally:
        await store.close()
    assert job is not None
    assert job.created_at == T0
    assert job.created_at.tzinfo is UTC
    assert job.to_json()["created_at"] == "2026-01-01T12:00:00Z"


@pytest.mark.postgres
@pytest.mark.anyio
async def test_two_pools_claim_fifty_deliveries_each_exactly_once(
    two_stores: tuple[SQLStore, SQLStore],
) -> None:
    first, second = two_stores
    for n in range(25):
        await _create(first, f"job_{n:02}")
        assert (await first.record(f"job_{n:02}", DONE, "poll", _at(150), routes("log", "slack"))).terminal
    claimed: list[tuple[str, str]] = []
    while True:
        batches = await asyncio.gather(
            *(s.claim_due_deliveries(_at(150), 3, 60) for s in [first, second] * 4)
        )
        if not any(batches):
            break
        claimed += [(d.job_id, d.handler) for batch in batches for d in batch]
    assert len(claimed) == len(set(claimed)) == 50
    assert {handler for _, handler in claimed} == {"log", "slack"}


@pytest.mark.postgres
@pytest.mark.anyio
async def test_two_pools_racing_for_the_same_chosen_polls_lease_each_once(
    two_stores: tuple[SQLStore, SQLStore],
) -> None:
    """Workers read the jobs in flight unleased and may choose the same ones: each is leased by one."""
    first, second = two_stores
    for n in range(20):
        await _create(second, f"job_{n:02}")  # due at 10 s; chosen at 20 s
    ids = [f"job_{n:02}" for n in range(20)]
    claims = await asyncio.gather(*(s.claim_chosen_polls(ids, _at(20), 300) for s in [first, second] * 4))
    claimed = [job.id for batch in claims for job in batch]
    assert sorted(claimed) == ids


@pytest.mark.postgres
@pytest.mark.anyio
async def test_two_pools_claim_fifty_due_polls_each_exactly_once(
    two_stores: tuple[SQLStore, SQLStore],
) -> None:
    first, second = two_stores
    for n in range(50):
        await _create(second, f"job_{n:02}")
    claimed: list[str] = []
    while True:
        batches = await asyncio.gather(*(s.claim_due_polls(_at(20), 3, 300) for s in [first, second] * 4))
        if not any(batches):
            break
        claimed += [job.id for batch in batches for job in batch]
    assert len(claimed) == len(set(claimed)) == 50


@pytest.mark.postgres
@pytest.mark.anyio
async def test_a_row_locked_elsewhere_is_skipped_not_waited_for(
    two_stores: tuple[SQLStore, SQLStore], pg_url: str
) -> None:
    store, _ = two_stores
    for job_id in ("job_a", "job_b"):
        await _create(store, job_id)
        await store.record(job_id, DONE, "poll", _at(150), routes("log"))
    with psycopg.connect(pg_url) as other:  # another replica, in the middle of claiming job_a's delivery
        other.execute("SELECT 1 FROM receiver_deliveries WHERE job_id = 'job_a' FOR UPDATE")
        # Waiting for the lock would last until the rollback below, past the timeout: a failure.
        claimed = await asyncio.wait_for(store.claim_due_deliveries(_at(150), 10, 60), timeout=5)
        other.rollback()
    assert [d.job_id for d in claimed] == ["job_b"]
    assert [d.job_id for d in await store.claim_due_deliveries(_at(150), 10, 60)] == ["job_a"]


@pytest.mark.postgres
@pytest.mark.anyio
async def test_eight_racing_terminal_records_on_two_pools_end_the_job_once(
    two_stores: tuple[SQLStore, SQLStore],
) -> None:
    first, second = two_stores
    await _create(first, "job_1")
    racers = [(first, DONE, "webhook"), (second, FAILED, "poll")] * 4
    results: list[Recorded] = await asyncio.gather(
        *(
            store.record("job_1", update, via, _at(150), routes("log", "slack"))
            for store, update, via in racers
        )
    )
    (winner,) = [r for r in results if r.terminal]
    assert all(not r.changed for r in results if r is not winner)
    job = await second.get_job("job_1")
    assert job is not None
    assert winner.job is not None
    assert (job.status, job.event_id) == (winner.job.status, winner.job.event_id)
    assert sorted((d.handler, str(d.status)) for d in job.deliveries) == [
        ("log", "pending"),
        ("slack", "pending"),
    ]
    due = await first.claim_due_deliveries(_at(150), 10, 60)
    assert {d.event["id"] for d in due} == {job.event_id}


@pytest.mark.postgres
@pytest.mark.anyio
async def test_a_single_statement_is_its_own_transaction_and_work_of_several_has_one(pg_url: str) -> None:
    connector = PostgresConnector.from_url(pg_url)
    await connector.open()
    alone = "SELECT now() = statement_timestamp() AS alone"  # now(): when the transaction began
    try:
        single = await connector.run(lambda tx: tx.fetch(alone, {}), single=True)
        inside = await connector.run(lambda tx: tx.fetch(alone, {}))
    finally:
        await connector.close()
    assert single == [{"alone": True}]  # no BEGIN before it: two round trips fewer
    assert inside == [{"alone": False}]  # BEGIN came first, as a statement of its own


@pytest.fixture
async def connector_with_table(pg_url: str) -> AsyncIterator[PostgresConnector]:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE sent (id text PRIMARY KEY)")
    connector = PostgresConnector.from_url(pg_url, pool_size=1)  # one connection: each run reuses it
    await connector.open()
    yield connector
    await connector.close()


async def _ids(connector: PostgresConnector) -> list[str]:
    rows = await connector.run(lambda tx: tx.fetch("SELECT id FROM sent ORDER BY id", {}), single=True)
    return [row["id"] for row in rows]


@pytest.mark.postgres
@pytest.mark.anyio
async def test_sent_statements_apply_in_order_and_commit_with_their_transaction(
    connector_with_table: PostgresConnector,
) -> None:
    async def work(tx: Any) -> list[Any]:
        await tx.send("INSERT INTO sent VALUES (%(id)s)", {"id": "a"})
        seen = await tx.fetch("SELECT count(*) AS n FROM sent", {})  # waits: what was sent went first
        await tx.send("INSERT INTO sent VALUES (%(id)s)", {"id": "b"})
        return seen

    assert await connector_with_table.run(work) == [{"n": 1}]
    assert await _ids(connector_with_table) == ["a", "b"]


@pytest.mark.postgres
@pytest.mark.anyio
async def test_a_sent_statement_that_fails_rolls_its_transaction_back_and_the_connection_serves_on(
    connector_with_table: PostgresConnector,
) -> None:
    async def work(tx: Any) -> None:
        await tx.send("INSERT INTO sent VALUES (%(id)s)", {"id": "a"})
        await tx.send("INSERT INTO sent VALUES (%(id)s)", {"id": "a"})  # refused: the key is taken

    with pytest.raises(psycopg.errors.UniqueViolation):
        await connector_with_table.run(work)
    assert await _ids(connector_with_table) == []
    await connector_with_table.run(lambda tx: tx.send("INSERT INTO sent VALUES ('c')", {}))
    assert await _ids(connector_with_table) == ["c"]
