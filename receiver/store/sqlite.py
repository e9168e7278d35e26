"""The job store on SQLite (WAL): one file, no service; safe for several processes on one machine."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from receiver.events import Delivery, DeliveryStatus, Job, JobError, JobStatus
from receiver.store.base import DueDelivery, Matcher, Recorded, Update
from receiver.store.common import apply_update, finished_status, replay_targets

T = TypeVar("T")

SCHEMA_VERSION = 1
BUSY_INLINE_MS = 20  # longest the event loop waits for another process's write lock
BUSY_PATIENT_MS = 30000
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    provider_job_id TEXT,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    metadata TEXT NOT NULL,
    output_urls TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    progress INTEGER,
    created_at TEXT NOT NULL,
    submitted_at TEXT,
    completed_at TEXT,
    completed_via TEXT,
    deadline_at TEXT NOT NULL,
    next_poll_at TEXT,
    poll_count INTEGER NOT NULL DEFAULT 0,
    locked_until TEXT,
    event_id TEXT,
    event TEXT
);
CREATE INDEX IF NOT EXISTS jobs_due_poll ON jobs (next_poll_at) WHERE next_poll_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
CREATE INDEX IF NOT EXISTS jobs_provider_job ON jobs (provider, provider_job_id);
CREATE TABLE IF NOT EXISTS deliveries (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    handler TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_attempt_at TEXT,
    locked_until TEXT,
    after TEXT NOT NULL DEFAULT '[]',
    report TEXT,
    PRIMARY KEY (job_id, handler)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_attempt_at)
    WHERE status IN ('pending', 'retrying');
"""

CLAIM_POLLS = """
UPDATE jobs SET locked_until = :lease
WHERE id IN (
    SELECT id FROM jobs
    WHERE next_poll_at IS NOT NULL AND next_poll_at <= :now AND completed_at IS NULL
      AND provider_job_id IS NOT NULL
      AND (locked_until IS NULL OR locked_until <= :now)
    ORDER BY next_poll_at LIMIT :limit
)
RETURNING *
"""

CLAIM_DELIVERIES = """
UPDATE deliveries SET locked_until = :lease
WHERE rowid IN (
    SELECT d.rowid FROM deliveries AS d
    WHERE d.status IN ('pending', 'retrying') AND d.next_attempt_at <= :now
      AND (d.locked_until IS NULL OR d.locked_until <= :now)
      AND NOT EXISTS (
          SELECT 1 FROM deliveries AS p, json_each(d.after) AS a
          WHERE p.job_id = d.job_id AND p.handler = a.value AND p.status IN ('pending', 'retrying')
      )
    ORDER BY d.next_attempt_at LIMIT :limit
)
RETURNING job_id, handler, attempts, after
"""


def _busy(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def ts(moment: datetime) -> str:
    """Fixed-width UTC text, so stored times compare correctly as strings."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def from_ts(text: str | None) -> datetime | None:
    if text is None:
        return None
    return datetime.fromisoformat(text)


class SQLiteStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        return cls(url.removeprefix("sqlite:///") or ":memory:")

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={BUSY_PATIENT_MS}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"database schema {version} is newer than this receiver ({SCHEMA_VERSION})"
                )
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            conn.close()
            raise
        conn.execute(f"PRAGMA busy_timeout={BUSY_INLINE_MS}")
        self._conn = conn

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.to_thread(conn.close)

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        """Run `fn` in a transaction. Statements here take microseconds, far less than a hop to a
        thread, so they run on the event loop; when another process holds the write lock longer than
        BUSY_INLINE_MS, or another call is in a thread, the work waits in a thread instead."""
        if self._lock.acquire(blocking=False):
            try:
                return self._transaction(fn, write)
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    raise
            finally:
                self._lock.release()
        return await asyncio.to_thread(self._patient, fn, write)

    def _patient(self, fn: Callable[[sqlite3.Connection], T], write: bool) -> T:
        with self._lock:
            conn = self._connection()
            conn.execute(f"PRAGMA busy_timeout={BUSY_PATIENT_MS}")
            try:
                return self._transaction(fn, write)
            finally:
                conn.execute(f"PRAGMA busy_timeout={BUSY_INLINE_MS}")

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("store is not open")
        return self._conn

    def _transaction(self, fn: Callable[[sqlite3.Connection], T], write: bool) -> T:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            result = fn(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    async def create_job(self, job: Job, deadline: datetime) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO jobs (id, provider, provider_job_id, model, status, request, metadata,"
                " created_at, deadline_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    job.provider,
                    job.provider_job_id,
                    job.model,
                    str(job.status),
                    json.dumps(job.request),
                    json.dumps(job.metadata),
                    ts(job.created_at),
                    ts(deadline),
                ),
            )

        await self._run(run)

    async def mark_submitted(
        self, job_id: str, provider_job_id: str, at: datetime, next_poll_at: datetime | None
    ) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE jobs SET provider_job_id = ?, submitted_at = ?,"
                " status = CASE WHEN status = 'pending' THEN 'submitted' ELSE status END,"
                " next_poll_at = CASE WHEN completed_at IS NULL THEN ? ELSE NULL END WHERE id = ?",
                (provider_job_id, ts(at), ts(next_poll_at) if next_poll_at else None, job_id),
            )

        await self._run(run)

    async def record(
        self, job_id: str, update: Update, via: str | None, now: datetime, routes: Matcher
    ) -> Recorded:
        return await self._run(lambda conn: _record(conn, job_id, update, via, now, routes))

    async def get_job(self, job_id: str) -> Job | None:
        def run(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return _job(conn, row) if row else None

        return await self._run(run, write=False)

    async def find_job(self, provider: str, provider_job_id: str) -> str | None:
        def run(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT id FROM jobs WHERE provider = ? AND provider_job_id = ?", (provider, provider_job_id)
            ).fetchone()
            return row["id"] if row else None

        return await self._run(run, write=False)

    async def list_jobs(self, status: str | None = None, limit: int = 100) -> list[Job]:
        def run(conn: sqlite3.Connection) -> list[Job]:
            rows = conn.execute(
                "SELECT * FROM jobs WHERE ? IS NULL OR status = ?"
                " ORDER BY created_at DESC, rowid DESC LIMIT ?",
                (status, status, limit),
            ).fetchall()
            return [_job(conn, row) for row in rows]

        return await self._run(run, write=False)

    async def claim_due_polls(self, now: datetime, limit: int, lease_seconds: float) -> list[Job]:
        def run(conn: sqlite3.Connection) -> list[Job]:
            lease = ts(now + timedelta(seconds=lease_seconds))
            rows = conn.execute(CLAIM_POLLS, {"now": ts(now), "lease": lease, "limit": limit}).fetchall()
            return [_job(conn, row, deliveries=False) for row in rows]

        return await self._run(run)

    async def schedule_poll(self, job_id: str, next_poll_at: datetime | None) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE jobs SET next_poll_at = CASE WHEN completed_at IS NULL THEN ? ELSE NULL END,"
                " poll_count = poll_count + 1, locked_until = NULL WHERE id = ?",
                (ts(next_poll_at) if next_poll_at else None, job_id),
            )

        await self._run(run)

    async def poll_soon(self, job_id: str, at: datetime) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            conn.execute(
                "UPDATE jobs SET next_poll_at = ? WHERE id = ? AND completed_at IS NULL"
                " AND (next_poll_at IS NULL OR next_poll_at > ?)",
                (ts(at), job_id, ts(at)),
            )
            return conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is not None

        return await self._run(run)

    async def overdue_jobs(self, now: datetime, limit: int) -> list[str]:
        def run(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT id FROM jobs WHERE completed_at IS NULL AND deadline_at <= ?"
                " ORDER BY deadline_at LIMIT ?",
                (ts(now), limit),
            ).fetchall()
            return [row["id"] for row in rows]

        return await self._run(run, write=False)

    async def claim_due_deliveries(
        self, now: datetime, limit: int, lease_seconds: float
    ) -> list[DueDelivery]:
        def run(conn: sqlite3.Connection) -> list[DueDelivery]:
            lease = ts(now + timedelta(seconds=lease_seconds))
            claimed = conn.execute(
                CLAIM_DELIVERIES, {"now": ts(now), "lease": lease, "limit": limit}
            ).fetchall()
            due = []
            for row in claimed:
                event = conn.execute("SELECT event FROM jobs WHERE id = ?", (row["job_id"],)).fetchone()
                after = json.loads(row["after"])
                reports = {
                    r["handler"]: json.loads(r["report"])
                    for r in conn.execute(
                        "SELECT handler, report FROM deliveries WHERE job_id = ? AND report IS NOT NULL"
                        " AND handler IN (SELECT value FROM json_each(?))",
                        (row["job_id"], json.dumps(after)),
                    )
                }
                due.append(
                    DueDelivery(
                        job_id=row["job_id"],
                        handler=row["handler"],
                        attempts=row["attempts"],
                        event=json.loads(event["event"]),
                        reports=reports,
                    )
                )
            return due

        return await self._run(run)

    async def finish_delivery(
        self,
        job_id: str,
        handler: str,
        *,
        delivered: bool,
        error: str | None = None,
        retry_at: datetime | None = None,
        report: dict[str, Any] | None = None,
    ) -> None:
        status = finished_status(delivered=delivered, retry_at=retry_at)

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE deliveries SET status = ?, attempts = attempts + 1, last_error = ?,"
                " next_attempt_at = ?, locked_until = NULL, report = COALESCE(?, report)"
                " WHERE job_id = ? AND handler = ?",
                (
                    str(status),
                    error,
                    ts(retry_at) if retry_at else None,
                    json.dumps(report) if report is not None else None,
                    job_id,
                    handler,
                ),
            )

        await self._run(run)

    async def replay(self, job_id: str, routes: Matcher, now: datetime, handler: str | None = None) -> int:
        def run(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT event FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["event"] is None:
                return 0
            existing = {
                r["handler"]
                for r in conn.execute("SELECT handler FROM deliveries WHERE job_id = ?", (job_id,))
            }
            targets = replay_targets(json.loads(row["event"]), routes, handler, existing)
            for name, after in targets:
                conn.execute(
                    "INSERT INTO deliveries (job_id, handler, status, attempts, next_attempt_at, after)"
                    " VALUES (?, ?, 'pending', 0, ?, ?) ON CONFLICT (job_id, handler) DO UPDATE SET"
                    " status = 'pending', attempts = 0, last_error = NULL,"
                    " next_attempt_at = excluded.next_attempt_at, locked_until = NULL",
                    (job_id, name, ts(now), json.dumps(list(after))),
                )
            return len(targets)

        return await self._run(run)

    async def dead_deliveries(self, limit: int = 1000) -> list[tuple[str, str, int, str | None]]:
        def run(conn: sqlite3.Connection) -> list[tuple[str, str, int, str | None]]:
            rows = conn.execute(
                "SELECT job_id, handler, attempts, last_error FROM deliveries WHERE status = 'dead'"
                " ORDER BY rowid DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return [(r["job_id"], r["handler"], r["attempts"], r["last_error"]) for r in rows]

        return await self._run(run, write=False)

    async def next_due(self) -> datetime | None:
        def run(conn: sqlite3.Connection) -> datetime | None:
            row = conn.execute(
                "SELECT MIN(t) FROM (SELECT MIN(next_poll_at) AS t FROM jobs WHERE completed_at IS NULL"
                " UNION ALL SELECT MIN(next_attempt_at) FROM deliveries"
                " WHERE status IN ('pending', 'retrying')"
                " UNION ALL SELECT MIN(deadline_at) FROM jobs WHERE completed_at IS NULL)"
            ).fetchone()
            return from_ts(row[0])

        return await self._run(run, write=False)

    async def counts(self) -> dict[str, dict[str, int]]:
        def run(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
            jobs = dict(conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
            deliveries = dict(
                conn.execute("SELECT status, COUNT(*) FROM deliveries GROUP BY status").fetchall()
            )
            return {"jobs": jobs, "deliveries": deliveries}

        return await self._run(run, write=False)

    async def job_counts(self) -> dict[tuple[str, str], int]:
        def run(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
            rows = conn.execute("SELECT provider, status, COUNT(*) FROM jobs GROUP BY provider, status")
            return {(provider, status): n for provider, status, n in rows.fetchall()}

        return await self._run(run, write=False)


def _record(
    conn: sqlite3.Connection, job_id: str, update: Update, via: str | None, now: datetime, routes: Matcher
) -> Recorded:
    row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    change = apply_update(_job(conn, row, deliveries=False) if row else None, update, via, now, routes)
    job = change.recorded.job
    if job is None or not change.recorded.changed:
        return change.recorded
    if change.event is None:
        conn.execute(
            "UPDATE jobs SET status = ?, progress = ?, provider_job_id = ? WHERE id = ?",
            (str(job.status), job.progress, job.provider_job_id, job_id),
        )
        return change.recorded
    conn.execute(
        "UPDATE jobs SET status = ?, provider_job_id = ?, output_urls = ?, error = ?, progress = ?,"
        " completed_at = ?, completed_via = ?, next_poll_at = NULL, locked_until = NULL,"
        " event_id = ?, event = ? WHERE id = ?",
        (
            str(job.status),
            job.provider_job_id,
            json.dumps(job.output_urls),
            json.dumps(job.error.to_json()) if job.error else None,
            job.progress,
            ts(now),
            via,
            job.event_id,
            json.dumps(change.event),
            job_id,
        ),
    )
    for route in change.routes:
        conn.execute(
            "INSERT INTO deliveries (job_id, handler, status, attempts, next_attempt_at, after)"
            " VALUES (?, ?, 'pending', 0, ?, ?)",
            (job_id, route.name, ts(now), json.dumps(list(route.after))),
        )
    return change.recorded


def _job(conn: sqlite3.Connection, row: sqlite3.Row, *, deliveries: bool = True) -> Job:
    job = Job(
        id=row["id"],
        provider=row["provider"],
        provider_job_id=row["provider_job_id"],
        model=row["model"],
        status=JobStatus(row["status"]),
        request=json.loads(row["request"]),
        metadata=json.loads(row["metadata"]),
        output_urls=json.loads(row["output_urls"]),
        error=JobError.from_json(json.loads(row["error"])) if row["error"] else None,
        progress=row["progress"],
        created_at=from_ts(row["created_at"]) or datetime.now(UTC),
        submitted_at=from_ts(row["submitted_at"]),
        completed_at=from_ts(row["completed_at"]),
        completed_via=row["completed_via"],
        event_id=row["event_id"],
        deadline_at=from_ts(row["deadline_at"]),
        poll_count=row["poll_count"],
    )
    if deliveries:
        job.deliveries = [
            Delivery(
                handler=d["handler"],
                status=DeliveryStatus(d["status"]),
                attempts=d["attempts"],
                last_error=d["last_error"],
                next_attempt_at=from_ts(d["next_attempt_at"]),
                report=json.loads(d["report"]) if d["report"] else None,
            )
            for d in conn.execute("SELECT * FROM deliveries WHERE job_id = ? ORDER BY rowid", (job.id,))
        ]
    return job
