"""One worker round when nothing is due, with 0 and with 100,000 finished jobs, on SQLite and PostgreSQL.

    .venv/bin/python bench/worker_round.py [--finished 100000] [--rounds 300] [--pg URL]

A round is the store calls the worker's paced loop makes each time it wakes with nothing to do:
overdue jobs, the jobs in flight it pools the chances of (read, unleased), due deliveries, then the next
due time it sleeps until (`Worker.run`). Each store holds 20 open jobs whose polls are due in 5 minutes
(in flight, inside the MAX_STEP window); the finished jobs are copies of one job that went the whole
way through the store (submitted, completed by a poll, its delivery delivered). Printed: the median
and p90 of a round in ms, and per store the ratio 100k / 0, which the partial indexes on open jobs
keep near 1; beside each, the same round as the worker made it before it read the jobs in flight
unleased (it leased all of them, then released all but the one it looked at: two writes of 20 rows),
the ratio of the two, and on PostgreSQL the write-ahead log each kind of round writes. PostgreSQL runs
in a fresh schema that is dropped afterwards; it is skipped, with the reason, when the server cannot
be reached (`--pg`, default $BENCH_DATABASE_URL or the test server).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from receiver.config import SettingsError
from receiver.events import Job, JobStatus
from receiver.schedule import MAX_STEP
from receiver.store import HandlerRoute, Store, Update, open_store

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
NOW = T0 + timedelta(minutes=5)
OPEN_JOBS = 20
PG_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")

JOB_COLUMNS = (
    "provider, provider_job_id, model, status, request, metadata, output_urls, error, progress, created_at,"
    " submitted_at, completed_at, completed_via, deadline_at, next_poll_at, poll_count, locked_until,"
    " event_id, event"
)
DELIVERY_COLUMNS = "handler, status, attempts, last_error, next_attempt_at, locked_until, after, report"
# Copies of the template job and its delivery, `:count` of each, ids suffixed with a number.
COPY = {
    "sqlite": (
        f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count)"
        f" INSERT INTO receiver_jobs (id, {JOB_COLUMNS}) SELECT id || '_' || i, {JOB_COLUMNS}"
        f" FROM receiver_jobs, n WHERE id = 'template'",
        f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count)"
        f" INSERT INTO receiver_deliveries (job_id, {DELIVERY_COLUMNS}) SELECT job_id || '_' || i,"
        f" {DELIVERY_COLUMNS} FROM receiver_deliveries, n WHERE job_id = 'template'",
        "ANALYZE",
    ),
    "postgres": (
        f"INSERT INTO receiver_jobs (id, {JOB_COLUMNS}) SELECT id || '_' || i, {JOB_COLUMNS}"
        f" FROM receiver_jobs, generate_series(1, %(count)s) AS n(i) WHERE id = 'template'",
        f"INSERT INTO receiver_deliveries (job_id, {DELIVERY_COLUMNS}) SELECT job_id || '_' || i,"
        f" {DELIVERY_COLUMNS} FROM receiver_deliveries, generate_series(1, %(count)s) AS n(i)"
        f" WHERE job_id = 'template'",
        "ANALYZE",  # what autovacuum does after a bulk load; the plans below do not depend on it
    ),
}


def _job(job_id: str) -> Job:
    return Job(
        id=job_id, provider="runbase", status=JobStatus.PENDING, request={"prompt": "bench"}, created_at=T0
    )


async def _fill(store: Store, finished: int, copy: Copy) -> None:
    for n in range(OPEN_JOBS):
        await store.create_job(_job(f"open_{n}"), T0 + timedelta(hours=1))
        await store.mark_submitted(f"open_{n}", f"rb_open_{n}", T0, NOW + timedelta(minutes=5))
    if not finished:
        return
    await store.create_job(_job("template"), T0 + timedelta(hours=1))
    await store.mark_submitted("template", "rb_template", T0, T0 + timedelta(seconds=30))
    done = Update(JobStatus.SUCCEEDED, output_urls=("https://cdn.example.com/v.mp4",))
    await store.record(
        "template", done, "poll", T0 + timedelta(minutes=2), lambda e: [HandlerRoute("log", ())]
    )
    await store.finish_delivery("template", "log", delivered=True)
    copy(finished)


async def _round(store: Store) -> None:
    await store.overdue_jobs(NOW, 50)
    await store.pending_polls(NOW, 50, NOW + timedelta(seconds=MAX_STEP))
    await store.claim_due_deliveries(NOW, 100, 120)
    await store.next_due()


async def _leasing_round(store: Store) -> None:
    """The round before the jobs in flight were read unleased: all leased, then released."""
    await store.overdue_jobs(NOW, 50)
    claimed = await store.claim_due_polls(NOW, 50, 300, due_by=NOW + timedelta(seconds=MAX_STEP))
    await store.release_polls([job.id for job in claimed])
    await store.claim_due_deliveries(NOW, 100, 120)
    await store.next_due()


async def _time_rounds(store: Store, rounds: int, round_: Callable[[Store], Awaitable[None]]) -> list[float]:
    for _ in range(20):
        await round_(store)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        await round_(store)
        times.append((time.perf_counter() - started) * 1000)
    return times


class Copy:
    def __init__(self, dialect: str, target: str) -> None:
        self.dialect, self.target = dialect, target

    def __call__(self, count: int) -> None:
        if self.dialect == "sqlite":
            with sqlite3.connect(self.target, isolation_level=None) as conn:
                for statement in COPY["sqlite"]:
                    conn.execute(statement, {"count": count} if ":count" in statement else {})
            return
        with psycopg.connect(self.target, autocommit=True) as conn:
            for statement in COPY["postgres"]:
                conn.execute(statement, {"count": count})


@asynccontextmanager
async def _sqlite(finished: int) -> AsyncIterator[Store]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.db"
        store = open_store(f"sqlite:///{path}")
        await store.open()
        try:
            await _fill(store, finished, Copy("sqlite", str(path)))
            yield store
        finally:
            await store.close()


@asynccontextmanager
async def _postgres(url: str, finished: int) -> AsyncIterator[Store]:
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    scoped = f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    try:
        store = open_store(scoped)
        await store.open()
        try:
            await _fill(store, finished, Copy("postgres", scoped))
            yield store
        finally:
            await store.close()
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def _wal(url: str) -> int:
    """The server's write-ahead log position in bytes (the whole cluster's writes: run it alone)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint").fetchone()
    assert row is not None
    return int(row[0])


def _unreachable(url: str) -> str | None:
    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        return str(exc).strip().splitlines()[0]
    return None


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--finished", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--pg", default=PG_URL)
    args = parser.parse_args()
    stores = {"sqlite": _sqlite}
    if (reason := _unreachable(args.pg)) is None:
        stores["postgres"] = lambda finished: _postgres(args.pg, finished)
    print(f"{'store':<10} {'finished jobs':>13} {'p50 ms':>8} {'p90 ms':>8} {'leasing p50':>12} {'ratio':>6}")
    ratios = {}
    walled: dict[int, list[float]] = {}
    for name, make in stores.items():
        medians = []
        for finished in (0, args.finished):
            try:
                async with make(finished) as store:
                    wal = _wal(args.pg) if name == "postgres" else None
                    times = await _time_rounds(store, args.rounds, _round)
                    if wal is not None:
                        wal_per_round = [(_wal(args.pg) - wal) / (args.rounds + 20)]
                        wal = _wal(args.pg)
                    leasing = statistics.median(await _time_rounds(store, args.rounds, _leasing_round))
                    if wal is not None:
                        wal_per_round.append((_wal(args.pg) - wal) / (args.rounds + 20))
                        walled[finished] = wal_per_round
            except SettingsError as exc:
                raise SystemExit(f"{name}: {exc}") from None
            median, p90 = statistics.median(times), statistics.quantiles(times, n=10)[-1]
            medians.append(median)
            figures = f"{median:>8.3f} {p90:>8.3f} {leasing:>12.3f} {median / leasing:>5.2f}x"
            print(f"{name:<10} {finished:>13,} {figures}")
        ratios[name] = medians[1] / medians[0]
    for name, ratio in ratios.items():
        print(f"{name}: round with {args.finished:,} finished jobs / with none = {ratio:.2f}x")
    for finished, (reading, leasing) in walled.items():
        print(
            f"postgres, {finished:,} finished: WAL written per round {reading:.0f} bytes, leasing every job"
            f" in flight {leasing:.0f} bytes"
        )
    if "postgres" not in stores:
        print(f"postgres: skipped, {args.pg} is unreachable: {reason}")


if __name__ == "__main__":
    asyncio.run(main())
