"""The lean road for progress reports (`record_progress`): the same outcome as `record` in every state,
nothing written for a report that changes nothing, and on SQLite a commit shared by the reports that
arrive together, each answered only once committed, all failed together when their commit fails."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from receiver.events import TERMINAL, Job, JobStatus, new_job_id
from receiver.store import Progressed, Store, StoreUnavailable, Update, open_store
from receiver.store.sqlite import SQLiteConnector
from receiver.store.sqlstore import SQLStore
from tests.support.pg import fresh_schema
from tests.support.waiting import wait_until_async

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
LIVE = tuple(status for status in JobStatus if status not in TERMINAL)  # new statuses are covered too


async def make_job(
    store: Store, status: JobStatus, progress: int | None = None, provider_job_id: str | None = None
) -> str:
    job = Job(
        id=new_job_id(),
        provider="apiframe",
        status=status if status in LIVE else JobStatus.PENDING,
        request={},
        created_at=T0,
        provider_job_id=provider_job_id,
    )
    await store.create_job(job, T0 + timedelta(hours=1))
    if progress is not None:
        await store.record(job.id, Update(JobStatus.PENDING, progress=progress), "poll", T0, lambda e: [])
    if status not in LIVE:
        await store.record(job.id, Update(status), "poll", T0, lambda e: [])
    return job.id


async def state(store: Store, job_id: str) -> tuple[JobStatus, int | None, str | None]:
    job = await store.get_job(job_id)
    assert job is not None
    return job.status, job.progress, job.provider_job_id


@pytest.mark.anyio
async def test_progress_has_the_outcome_of_record_in_every_state(store: Store) -> None:
    starts = itertools.product(tuple(JobStatus), (None, 40), (None, "p1"))
    reports = list(
        itertools.product((JobStatus.SUBMITTED, JobStatus.RUNNING), (None, 0, 40, 70), (None, "p1", "p2"))
    )
    compared = 0
    for status, progress, provider_job_id in starts:
        for report_status, report_progress, report_id in reports:
            update = Update(report_status, provider_job_id=report_id, progress=report_progress)
            full = await make_job(store, status, progress, provider_job_id)
            lean = await make_job(store, status, progress, provider_job_id)
            recorded = await store.record(full, update, "webhook", T0, lambda e: [])
            progressed = await store.record_progress(lean, update)
            case = (status, progress, provider_job_id, update)
            assert recorded.job is not None
            assert progressed == Progressed(recorded.job.status, recorded.changed, recorded.conflict), case
            assert await state(store, lean) == await state(store, full), case
            compared += 1
    assert compared == len(JobStatus) * 2 * 2 * 24


@pytest.mark.anyio
async def test_progress_for_an_unknown_job_finds_none(store: Store) -> None:
    assert await store.record_progress("job_unknown", Update(JobStatus.RUNNING, progress=5)) == Progressed(
        None, changed=False
    )


@pytest.mark.anyio
async def test_a_report_that_changes_nothing_writes_nothing_on_sqlite(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/jobs.db")
    await store.open()
    watcher = sqlite3.connect(tmp_path / "jobs.db")
    try:
        job_id = await make_job(store, JobStatus.SUBMITTED, provider_job_id="p1")
        before = watcher.execute("PRAGMA data_version").fetchone()
        first = await store.record_progress(job_id, Update(JobStatus.RUNNING, "p1", progress=40))
        moved = watcher.execute("PRAGMA data_version").fetchone()
        again = await store.record_progress(job_id, Update(JobStatus.RUNNING, "p1", progress=40))
        back = await store.record_progress(job_id, Update(JobStatus.SUBMITTED, "p1", progress=10))
        after = watcher.execute("PRAGMA data_version").fetchone()
    finally:
        watcher.close()
        await store.close()
    assert first == Progressed(JobStatus.RUNNING, changed=True)
    assert again == back == Progressed(JobStatus.RUNNING, changed=False)
    assert moved != before  # the probe sees a commit that wrote
    assert after == moved  # and none after


@pytest.mark.postgres
@pytest.mark.anyio
async def test_a_report_that_changes_nothing_writes_nothing_on_postgres() -> None:
    with fresh_schema() as url:
        store = open_store(url)
        await store.open()
        try:
            job_id = await make_job(store, JobStatus.SUBMITTED, provider_job_id="p1")
            with psycopg.connect(url, autocommit=True) as conn:

                def version() -> object:
                    row = conn.execute("SELECT xmin FROM receiver_jobs WHERE id = %s", (job_id,)).fetchone()
                    return row[0] if row else None

                before = version()
                first = await store.record_progress(job_id, Update(JobStatus.RUNNING, "p1", progress=40))
                moved = version()
                again = await store.record_progress(job_id, Update(JobStatus.RUNNING, None, progress=40))
                after = version()
        finally:
            await store.close()
    assert first.changed
    assert not again.changed
    assert moved != before
    assert after == moved


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SQLStore]:
    store = SQLStore(SQLiteConnector(str(tmp_path / "jobs.db")))
    await store.open()
    yield store
    await store.close()


def _reader(tmp_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)


def _progress(reader: sqlite3.Connection, job_id: str) -> int | None:
    row = reader.execute("SELECT progress FROM receiver_jobs WHERE id = ?", (job_id,)).fetchone()
    return row[0] if row else None


@pytest.mark.anyio
async def test_concurrent_reports_share_one_commit_and_each_returns_committed(
    sqlite_store: SQLStore, tmp_path: Path
) -> None:
    jobs = [await make_job(sqlite_store, JobStatus.SUBMITTED) for _ in range(20)]
    connector = sqlite_store.connector
    assert isinstance(connector, SQLiteConnector)
    statements: list[str] = []
    connector._connection().set_trace_callback(statements.append)
    reader = _reader(tmp_path)
    seen: dict[str, int | None] = {}

    async def report(i: int, job_id: str) -> None:
        await sqlite_store.record_progress(job_id, Update(JobStatus.RUNNING, progress=i + 1))
        seen[job_id] = _progress(reader, job_id)  # read by another connection the moment it returns

    try:
        await asyncio.gather(*(report(i, job_id) for i, job_id in enumerate(jobs)))
    finally:
        connector._connection().set_trace_callback(None)
        reader.close()
    assert seen == {job_id: i + 1 for i, job_id in enumerate(jobs)}
    assert statements.count("COMMIT") == 1
    assert statements.count("BEGIN IMMEDIATE") == 1


@pytest.mark.anyio
async def test_a_failed_group_commit_fails_every_report_in_it_and_commits_none(
    sqlite_store: SQLStore, tmp_path: Path
) -> None:
    jobs = [await make_job(sqlite_store, JobStatus.SUBMITTED) for _ in range(8)]
    poisoned = jobs[5]
    reader = _reader(tmp_path)
    reader.execute(
        f"CREATE TRIGGER refuse BEFORE UPDATE ON receiver_jobs WHEN NEW.id = '{poisoned}' "
        "BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    try:
        outcomes = await asyncio.gather(
            *(sqlite_store.record_progress(j, Update(JobStatus.RUNNING, progress=50)) for j in jobs),
            return_exceptions=True,
        )
        stored = [_progress(reader, job_id) for job_id in jobs]
        reader.execute("DROP TRIGGER refuse")
        retried = await sqlite_store.record_progress(jobs[0], Update(JobStatus.RUNNING, progress=50))
    finally:
        reader.close()
    assert all(isinstance(outcome, StoreUnavailable) for outcome in outcomes), outcomes
    assert stored == [None] * len(jobs)
    assert retried == Progressed(JobStatus.RUNNING, changed=True)


@pytest.mark.anyio
async def test_a_group_commit_waits_in_a_thread_while_another_process_writes(
    sqlite_store: SQLStore, tmp_path: Path
) -> None:
    jobs = [await make_job(sqlite_store, JobStatus.SUBMITTED) for _ in range(3)]
    other = _reader(tmp_path)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    connector = sqlite_store.connector
    assert isinstance(connector, SQLiteConnector)
    reports = asyncio.gather(
        *(sqlite_store.record_progress(j, Update(JobStatus.RUNNING, progress=7)) for j in jobs)
    )
    try:
        await wait_until_async(lambda: connector._waiting, timeout=10)
        other.execute("COMMIT")
        outcomes = await reports
        stored = [_progress(other, job_id) for job_id in jobs]
    finally:
        other.close()
    assert outcomes == [Progressed(JobStatus.RUNNING, changed=True)] * 3
    assert stored == [7, 7, 7]


@pytest.mark.anyio
async def test_a_group_of_reports_has_the_outcome_of_record_in_every_state(store: Store) -> None:
    assert isinstance(store, SQLStore)
    starts = itertools.product(tuple(JobStatus), (None, 40), (None, "p1"))
    reports = list(
        itertools.product((JobStatus.SUBMITTED, JobStatus.RUNNING), (None, 0, 40, 70), (None, "p1", "p2"))
    )
    group: list[tuple[str, Update]] = []
    expected: list[tuple[Progressed, tuple[JobStatus, int | None, str | None]]] = []
    for status, progress, provider_job_id in starts:
        for report_status, report_progress, report_id in reports:
            update = Update(report_status, provider_job_id=report_id, progress=report_progress)
            full = await make_job(store, status, progress, provider_job_id)
            recorded = await store.record(full, update, "webhook", T0, lambda e: [])
            assert recorded.job is not None
            expected.append(
                (
                    Progressed(recorded.job.status, recorded.changed, recorded.conflict),
                    await state(store, full),
                )
            )
            group.append((await make_job(store, status, progress, provider_job_id), update))
    outcomes = await store.advance_many(group)
    assert len(outcomes) == len(JobStatus) * 2 * 2 * 24
    for (job_id, update), outcome, (progressed, after) in zip(group, outcomes, expected, strict=True):
        assert (outcome, await state(store, job_id)) == (progressed, after), update


@pytest.mark.anyio
async def test_reports_of_one_job_in_a_group_are_applied_in_their_order(store: Store) -> None:
    assert isinstance(store, SQLStore)
    reports = [
        Update(JobStatus.SUBMITTED, "p1", progress=10),
        Update(JobStatus.RUNNING, None, progress=5),
        Update(JobStatus.RUNNING, "p1", progress=30),
        Update(JobStatus.RUNNING, "p2", progress=90),  # another provider job: a conflict
        Update(JobStatus.RUNNING, "p1", progress=30),  # the same again: changes nothing
    ]
    one_by_one, grouped, other = [await make_job(store, JobStatus.PENDING) for _ in range(3)]
    expected = [await store.record_progress(one_by_one, update) for update in reports]
    group = [(grouped, update) for update in reports]
    group[2:2] = [("job_unknown", reports[0]), (other, reports[2])]
    outcomes = await store.advance_many(group)
    assert [o for (job_id, _), o in zip(group, outcomes, strict=True) if job_id == grouped] == expected
    assert outcomes[2:4] == [Progressed(None, changed=False), Progressed(JobStatus.RUNNING, changed=True)]
    assert await state(store, grouped) == await state(store, one_by_one) == (JobStatus.RUNNING, 30, "p1")
    assert await state(store, other) == (JobStatus.RUNNING, 30, "p1")


@pytest.fixture
async def pg_store() -> AsyncIterator[tuple[SQLStore, str]]:
    with fresh_schema() as url:
        store = open_store(url)
        assert isinstance(store, SQLStore)
        await store.open()
        try:
            yield store, url
        finally:
            await store.close()


@pytest.mark.postgres
@pytest.mark.anyio
async def test_reports_made_together_on_postgres_share_one_statement_and_each_returns_committed(
    pg_store: tuple[SQLStore, str],
) -> None:
    store, url = pg_store
    jobs = [await make_job(store, JobStatus.SUBMITTED) for _ in range(40)]
    connector = store.connector
    sent = 0
    run_grouped = connector.run_grouped

    async def counted(work: Any) -> Any:
        nonlocal sent
        sent += 1
        return await run_grouped(work)

    seen: dict[str, int | None] = {}
    with psycopg.connect(url, autocommit=True) as reader:

        async def report(i: int, job_id: str) -> Progressed:
            outcome = await store.record_progress(job_id, Update(JobStatus.RUNNING, progress=i + 1))
            row = reader.execute("SELECT progress FROM receiver_jobs WHERE id = %s", (job_id,)).fetchone()
            seen[job_id] = row[0] if row else None  # read by another connection the moment it returns
            return outcome

        connector.run_grouped = counted  # type: ignore[method-assign]
        try:
            outcomes = await asyncio.gather(*(report(i, job_id) for i, job_id in enumerate(jobs)))
        finally:
            del connector.run_grouped  # type: ignore[method-assign]
    assert outcomes == [Progressed(JobStatus.RUNNING, changed=True)] * 40
    assert seen == {job_id: i + 1 for i, job_id in enumerate(jobs)}
    assert sent == 1


@pytest.mark.postgres
@pytest.mark.anyio
async def test_a_group_refused_on_postgres_for_one_report_fails_that_one_alone(
    pg_store: tuple[SQLStore, str],
) -> None:
    store, url = pg_store
    jobs = [await make_job(store, JobStatus.SUBMITTED) for _ in range(8)]
    poisoned = jobs[5]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION 'refused'; END $$"
        )
        conn.execute(
            "CREATE TRIGGER refuse BEFORE UPDATE ON receiver_jobs FOR EACH ROW "
            f"WHEN (NEW.id = '{poisoned}') EXECUTE FUNCTION refuse()"
        )
        outcomes = await asyncio.gather(
            *(store.record_progress(j, Update(JobStatus.RUNNING, progress=50)) for j in jobs),
            return_exceptions=True,
        )
        stored = [
            conn.execute("SELECT progress FROM receiver_jobs WHERE id = %s", (job_id,)).fetchone()
            for job_id in jobs
        ]
    assert isinstance(outcomes[5], psycopg.errors.RaiseException), outcomes
    assert outcomes[:5] + outcomes[6:] == [Progressed(JobStatus.RUNNING, changed=True)] * 7
    assert [row[0] if row else None for row in stored] == [50] * 5 + [None] + [50] * 2


@pytest.mark.postgres
@pytest.mark.anyio
async def test_groups_naming_the_same_jobs_in_opposite_orders_wait_for_each_other_without_deadlock() -> None:
    with fresh_schema() as url:
        # A plan that finds each group's jobs by the primary key in the order the group names them, as
        # the server picks for a large table: locking in that order would deadlock here. The server
        # would break the deadlock after deadlock_timeout and the store would run the group again, so
        # that is set past the test's patience: a deadlock fails it.
        plan = ("enable_hashjoin=off", "enable_mergejoin=off", "enable_seqscan=off", "deadlock_timeout=60s")
        planned = url + "".join(f"%20-c{option.replace('=', '%3D')}" for option in plan)
        store = open_store(planned)
        assert isinstance(store, SQLStore)
        await store.open()
        try:
            await _opposite_groups(store, url)
        finally:
            await store.close()


async def _opposite_groups(store: SQLStore, url: str) -> None:
    first, second = sorted([await make_job(store, JobStatus.SUBMITTED) for _ in range(2)])

    def waiting(conn: psycopg.Connection[Any]) -> int:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        ).fetchone()
        return int(row[0]) if row else 0

    def group(progress: int, *job_ids: str) -> asyncio.Future[list[Progressed]]:
        return asyncio.ensure_future(
            store.advance_many([(job_id, Update(JobStatus.RUNNING, progress=progress)) for job_id in job_ids])
        )

    with psycopg.connect(url) as holder, psycopg.connect(url, autocommit=True) as watcher:
        # Another transaction holds the second job: the group [second, first] queues on it first, then
        # [first, second] comes. Locking in the order each names them, once the holder lets go the first
        # group would hold the second job and wait for the first, which the other holds.
        holder.execute("SELECT id FROM receiver_jobs WHERE id = %s FOR UPDATE", (second,))
        backward = group(10, second, first)
        await wait_until_async(lambda: waiting(watcher) == 1, timeout=10)
        forward = group(20, first, second)
        await wait_until_async(lambda: waiting(watcher) == 2, timeout=10)
        holder.rollback()
        outcomes = await asyncio.wait_for(asyncio.gather(backward, forward), timeout=20)
    assert outcomes == [[Progressed(JobStatus.RUNNING, changed=True)] * 2] * 2
    assert await state(store, first) == await state(store, second) == (JobStatus.RUNNING, 20, None)
