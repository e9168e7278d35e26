"""The job store on PostgreSQL: several replicas share it; claims are one statement with SKIP LOCKED."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Json, Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from receiver import logs
from receiver.config import SettingsError
from receiver.events import Delivery, DeliveryStatus, Job, JobError, JobStatus
from receiver.store.base import DueDelivery, Matcher, Recorded, Update
from receiver.store.common import apply_update, finished_status, replay_targets

Connection = AsyncConnection[DictRow]

SCHEMA_VERSION = 1
SCHEMA_LOCK = 0x6B6C696E67  # pg_advisory_xact_lock key ("kling"): one replica migrates at a time
POOL_MIN, POOL_MAX = 1, 10
CONNECT_TIMEOUT = 10

VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS receiver_schema_version (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""

# Migration n brings the schema from version n-1 to n. Plain CREATE (no IF NOT EXISTS): a migration
# that ran twice would fail loudly instead of hiding a broken lock.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """
        CREATE TABLE receiver_jobs (
            seq bigint GENERATED ALWAYS AS IDENTITY,
            id text PRIMARY KEY,
            provider text NOT NULL,
            provider_job_id text,
            model text NOT NULL,
            status text NOT NULL,
            request jsonb NOT NULL,
            metadata jsonb NOT NULL,
            output_urls jsonb NOT NULL DEFAULT '[]',
            error jsonb,
            progress integer,
            created_at timestamptz NOT NULL,
            submitted_at timestamptz,
            completed_at timestamptz,
            completed_via text,
            deadline_at timestamptz NOT NULL,
            next_poll_at timestamptz,
            poll_count integer NOT NULL DEFAULT 0,
            locked_until timestamptz,
            event_id text,
            event json  -- json, not jsonb: re-sent as built, keys in their order
        )
        """,
        "CREATE INDEX receiver_jobs_due_poll ON receiver_jobs (next_poll_at)"
        " WHERE completed_at IS NULL AND next_poll_at IS NOT NULL",
        "CREATE INDEX receiver_jobs_deadline ON receiver_jobs (deadline_at) WHERE completed_at IS NULL",
        "CREATE INDEX receiver_jobs_created ON receiver_jobs (created_at DESC, seq DESC)",
        "CREATE INDEX receiver_jobs_provider_job ON receiver_jobs (provider, provider_job_id)",
        """
        CREATE TABLE receiver_deliveries (
            seq bigint GENERATED ALWAYS AS IDENTITY,
            job_id text NOT NULL REFERENCES receiver_jobs (id) ON DELETE CASCADE,
            handler text NOT NULL,
            status text NOT NULL,
            attempts integer NOT NULL DEFAULT 0,
            last_error text,
            next_attempt_at timestamptz,
            locked_until timestamptz,
            after text[] NOT NULL DEFAULT '{}',
            report jsonb,
            PRIMARY KEY (job_id, handler)
        )
        """,
        "CREATE INDEX receiver_deliveries_due ON receiver_deliveries (next_attempt_at)"
        " WHERE status IN ('pending', 'retrying')",
        "CREATE INDEX receiver_deliveries_dead ON receiver_deliveries (seq) WHERE status = 'dead'",
    ),
}

CLAIM_POLLS = """
WITH candidate AS (
    SELECT id FROM receiver_jobs
    WHERE next_poll_at <= %(now)s AND completed_at IS NULL AND provider_job_id IS NOT NULL
      AND (locked_until IS NULL OR locked_until <= %(now)s)
    ORDER BY next_poll_at LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE receiver_jobs AS j SET locked_until = %(lease)s
    FROM candidate WHERE j.id = candidate.id
    RETURNING j.*
)
SELECT * FROM claimed ORDER BY next_poll_at, seq
"""

# The reports of the handlers a delivery comes after are read from the statement's snapshot: this
# statement changes only leases, never reports.
CLAIM_DELIVERIES = """
WITH candidate AS (
    SELECT d.job_id, d.handler FROM receiver_deliveries AS d
    WHERE d.status IN ('pending', 'retrying') AND d.next_attempt_at <= %(now)s
      AND (d.locked_until IS NULL OR d.locked_until <= %(now)s)
      AND NOT EXISTS (
          SELECT 1 FROM receiver_deliveries AS p
          WHERE p.job_id = d.job_id AND p.handler = ANY (d.after) AND p.status IN ('pending', 'retrying')
      )
    ORDER BY d.next_attempt_at LIMIT %(limit)s
    FOR UPDATE OF d SKIP LOCKED
), claimed AS (
    UPDATE receiver_deliveries AS d SET locked_until = %(lease)s
    FROM candidate WHERE d.job_id = candidate.job_id AND d.handler = candidate.handler
    RETURNING d.job_id, d.handler, d.attempts, d.after, d.next_attempt_at, d.seq
)
SELECT c.job_id, c.handler, c.attempts, j.event,
    (SELECT COALESCE(jsonb_object_agg(p.handler, p.report), '{}') FROM receiver_deliveries AS p
     WHERE p.job_id = c.job_id AND p.handler = ANY (c.after) AND p.report IS NOT NULL) AS reports
FROM claimed AS c JOIN receiver_jobs AS j ON j.id = c.job_id
ORDER BY c.next_attempt_at, c.seq
"""

INSERT_JOB = """
INSERT INTO receiver_jobs (id, provider, provider_job_id, model, status, request, metadata, created_at,
    deadline_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
"""

MARK_SUBMITTED = """
UPDATE receiver_jobs SET provider_job_id = %s, submitted_at = %s,
    status = CASE WHEN status = 'pending' THEN 'submitted' ELSE status END,
    next_poll_at = CASE WHEN completed_at IS NULL THEN %s::timestamptz ELSE NULL END
WHERE id = %s
"""

LOCK_JOB = "SELECT * FROM receiver_jobs WHERE id = %s FOR UPDATE"

RECORD_PROGRESS = "UPDATE receiver_jobs SET status = %s, progress = %s, provider_job_id = %s WHERE id = %s"

RECORD_END = """
UPDATE receiver_jobs SET status = %s, provider_job_id = %s, output_urls = %s, error = %s, progress = %s,
    completed_at = %s, completed_via = %s, next_poll_at = NULL, locked_until = NULL, event_id = %s,
    event = %s
WHERE id = %s
"""

INSERT_DELIVERY = """
INSERT INTO receiver_deliveries (job_id, handler, status, attempts, next_attempt_at, after)
VALUES (%s, %s, 'pending', 0, %s, %s)
"""

REPLAY_DELIVERY = (
    INSERT_DELIVERY
    + """
ON CONFLICT (job_id, handler) DO UPDATE SET status = 'pending', attempts = 0, last_error = NULL,
    next_attempt_at = excluded.next_attempt_at, locked_until = NULL
"""
)

GET_JOB = "SELECT * FROM receiver_jobs WHERE id = %s"

FIND_JOB = "SELECT id FROM receiver_jobs WHERE provider = %s AND provider_job_id = %s"

LIST_JOBS = """
SELECT * FROM receiver_jobs WHERE %(status)s::text IS NULL OR status = %(status)s
ORDER BY created_at DESC, seq DESC LIMIT %(limit)s
"""

JOB_DELIVERIES = "SELECT * FROM receiver_deliveries WHERE job_id = ANY (%s::text[]) ORDER BY seq"

SCHEDULE_POLL = """
UPDATE receiver_jobs SET next_poll_at = CASE WHEN completed_at IS NULL THEN %s::timestamptz END,
    poll_count = poll_count + 1, locked_until = NULL
WHERE id = %s
"""

POLL_SOON = """
WITH moved AS (
    UPDATE receiver_jobs SET next_poll_at = %(at)s
    WHERE id = %(id)s AND completed_at IS NULL AND (next_poll_at IS NULL OR next_poll_at > %(at)s)
)
SELECT EXISTS (SELECT 1 FROM receiver_jobs WHERE id = %(id)s) AS found
"""

OVERDUE_JOBS = """
SELECT id FROM receiver_jobs WHERE completed_at IS NULL AND deadline_at <= %s
ORDER BY deadline_at LIMIT %s
"""

FINISH_DELIVERY = """
UPDATE receiver_deliveries SET status = %s, attempts = attempts + 1, last_error = %s,
    next_attempt_at = %s, locked_until = NULL, report = COALESCE(%s, report)
WHERE job_id = %s AND handler = %s
"""

JOB_EVENT = "SELECT event FROM receiver_jobs WHERE id = %s"

DELIVERY_HANDLERS = "SELECT handler FROM receiver_deliveries WHERE job_id = %s"

DEAD_DELIVERIES = """
SELECT job_id, handler, attempts, last_error FROM receiver_deliveries WHERE status = 'dead'
ORDER BY seq DESC LIMIT %s
"""

NEXT_DUE = """
SELECT LEAST(
    (SELECT MIN(next_poll_at) FROM receiver_jobs WHERE completed_at IS NULL),
    (SELECT MIN(next_attempt_at) FROM receiver_deliveries WHERE status IN ('pending', 'retrying')),
    (SELECT MIN(deadline_at) FROM receiver_jobs WHERE completed_at IS NULL)
) AS due
"""

COUNTS = """
SELECT 'jobs' AS kind, status, COUNT(*) AS n FROM receiver_jobs GROUP BY status
UNION ALL
SELECT 'deliveries', status, COUNT(*) FROM receiver_deliveries GROUP BY status
"""

JOB_COUNTS = "SELECT provider, status, COUNT(*) AS n FROM receiver_jobs GROUP BY provider, status"


class PostgresStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._pool: AsyncConnectionPool[Connection] | None = None

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        """Check the URL now (a mistake is a settings error at start-up); the password never shows."""
        logs.register_secrets(_passwords(url))
        try:
            conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise SettingsError(
                f"RECEIVER_DATABASE_URL: not a valid PostgreSQL URL ({_safe(url, exc)})"
            ) from None
        return cls(url)

    async def open(self) -> None:
        options = _connect_options(self.url)
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            self.url,
            connection_class=AsyncConnection[DictRow],
            kwargs={**options, "row_factory": dict_row},
            min_size=POOL_MIN,
            max_size=POOL_MAX,
            open=False,
            name="receiver-store",
        )
        try:
            async with await AsyncConnection.connect(self.url, **options) as conn:
                await _migrate(conn)
            await pool.open(wait=True, timeout=CONNECT_TIMEOUT)
        except BaseException as exc:
            await pool.close()  # also when cancelled: no pool workers outlive a failed open
            if isinstance(exc, psycopg.OperationalError | PoolTimeout):
                raise SettingsError(
                    f"RECEIVER_DATABASE_URL: cannot use PostgreSQL: {_safe(self.url, exc)}"
                ) from None
            raise
        self._pool = pool

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Connection]:
        if self._pool is None:
            raise RuntimeError("store is not open")
        async with self._pool.connection() as conn, conn.transaction():
            yield conn

    async def create_job(self, job: Job, deadline: datetime) -> None:
        async with self._transaction() as conn:
            await conn.execute(
                INSERT_JOB,
                (
                    job.id,
                    job.provider,
                    job.provider_job_id,
                    job.model,
                    str(job.status),
                    Jsonb(job.request),
                    Jsonb(job.metadata),
                    job.created_at,
                    deadline,
                ),
            )

    async def mark_submitted(
        self, job_id: str, provider_job_id: str, at: datetime, next_poll_at: datetime | None
    ) -> None:
        async with self._transaction() as conn:
            await conn.execute(MARK_SUBMITTED, (provider_job_id, at, next_poll_at, job_id))

    async def record(
        self, job_id: str, update: Update, via: str | None, now: datetime, routes: Matcher
    ) -> Recorded:
        async with self._transaction() as conn:
            row = await (await conn.execute(LOCK_JOB, (job_id,))).fetchone()
            change = apply_update(_job(row) if row else None, update, via, now, routes)
            job = change.recorded.job
            if job is None or not change.recorded.changed:
                return change.recorded
            if change.event is None:
                await conn.execute(
                    RECORD_PROGRESS, (str(job.status), job.progress, job.provider_job_id, job_id)
                )
                return change.recorded
            error = Jsonb(job.error.to_json()) if job.error else None
            await conn.execute(
                RECORD_END,
                (
                    str(job.status),
                    job.provider_job_id,
                    Jsonb(job.output_urls),
                    error,
                    job.progress,
                    now,
                    via,
                    job.event_id,
                    Json(change.event),
                    job_id,
                ),
            )
            async with conn.cursor() as cur:
                await cur.executemany(
                    INSERT_DELIVERY, [(job_id, r.name, now, list(r.after)) for r in change.routes]
                )
            return change.recorded

    async def get_job(self, job_id: str) -> Job | None:
        async with self._transaction() as conn:
            row = await (await conn.execute(GET_JOB, (job_id,))).fetchone()
            if row is None:
                return None
            (job,) = await _with_deliveries(conn, [row])
            return job

    async def find_job(self, provider: str, provider_job_id: str) -> str | None:
        async with self._transaction() as conn:
            row = await (await conn.execute(FIND_JOB, (provider, provider_job_id))).fetchone()
            return str(row["id"]) if row else None

    async def list_jobs(self, status: str | None = None, limit: int = 100) -> list[Job]:
        async with self._transaction() as conn:
            rows = await (await conn.execute(LIST_JOBS, {"status": status, "limit": limit})).fetchall()
            return await _with_deliveries(conn, rows)

    async def claim_due_polls(self, now: datetime, limit: int, lease_seconds: float) -> list[Job]:
        lease = now + timedelta(seconds=lease_seconds)
        async with self._transaction() as conn:
            cursor = await conn.execute(CLAIM_POLLS, {"now": now, "lease": lease, "limit": limit})
            return [_job(row) for row in await cursor.fetchall()]

    async def schedule_poll(self, job_id: str, next_poll_at: datetime | None) -> None:
        async with self._transaction() as conn:
            await conn.execute(SCHEDULE_POLL, (next_poll_at, job_id))

    async def poll_soon(self, job_id: str, at: datetime) -> bool:
        async with self._transaction() as conn:
            row = await (await conn.execute(POLL_SOON, {"id": job_id, "at": at})).fetchone()
            return bool(row and row["found"])

    async def overdue_jobs(self, now: datetime, limit: int) -> list[str]:
        async with self._transaction() as conn:
            rows = await (await conn.execute(OVERDUE_JOBS, (now, limit))).fetchall()
            return [row["id"] for row in rows]

    async def claim_due_deliveries(
        self, now: datetime, limit: int, lease_seconds: float
    ) -> list[DueDelivery]:
        lease = now + timedelta(seconds=lease_seconds)
        async with self._transaction() as conn:
            cursor = await conn.execute(CLAIM_DELIVERIES, {"now": now, "lease": lease, "limit": limit})
            return [
                DueDelivery(
                    job_id=row["job_id"],
                    handler=row["handler"],
                    attempts=row["attempts"],
                    event=row["event"],
                    reports=row["reports"],
                )
                for row in await cursor.fetchall()
            ]

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
        stored = Jsonb(report) if report is not None else None
        async with self._transaction() as conn:
            await conn.execute(FINISH_DELIVERY, (str(status), error, retry_at, stored, job_id, handler))

    async def replay(self, job_id: str, routes: Matcher, now: datetime, handler: str | None = None) -> int:
        async with self._transaction() as conn:
            row = await (await conn.execute(JOB_EVENT, (job_id,))).fetchone()
            if row is None or row["event"] is None:
                return 0
            existing = {
                r["handler"] for r in await (await conn.execute(DELIVERY_HANDLERS, (job_id,))).fetchall()
            }
            targets = replay_targets(row["event"], routes, handler, existing)
            async with conn.cursor() as cur:
                await cur.executemany(
                    REPLAY_DELIVERY, [(job_id, name, now, list(after)) for name, after in targets]
                )
            return len(targets)

    async def dead_deliveries(self, limit: int = 1000) -> list[tuple[str, str, int, str | None]]:
        async with self._transaction() as conn:
            rows = await (await conn.execute(DEAD_DELIVERIES, (limit,))).fetchall()
            return [(r["job_id"], r["handler"], r["attempts"], r["last_error"]) for r in rows]

    async def next_due(self) -> datetime | None:
        async with self._transaction() as conn:
            row = await (await conn.execute(NEXT_DUE)).fetchone()
            return _utc(row["due"]) if row else None

    async def counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {"jobs": {}, "deliveries": {}}
        async with self._transaction() as conn:
            for row in await (await conn.execute(COUNTS)).fetchall():
                counts[row["kind"]][row["status"]] = row["n"]
        return counts

    async def job_counts(self) -> dict[tuple[str, str], int]:
        async with self._transaction() as conn:
            rows = await (await conn.execute(JOB_COUNTS)).fetchall()
        return {(row["provider"], row["status"]): row["n"] for row in rows}


async def _migrate(conn: AsyncConnection[Any]) -> None:
    """Bring the schema to SCHEMA_VERSION in one transaction, holding an advisory lock so replicas that
    start together migrate one after the other (the later ones find the work done)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        await conn.execute(VERSION_TABLE)
        row = await (
            await conn.execute("SELECT COALESCE(MAX(version), 0) FROM receiver_schema_version")
        ).fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise SettingsError(
                f"RECEIVER_DATABASE_URL: database schema {version} is newer than this receiver"
                f" ({SCHEMA_VERSION})"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[target]:
                await conn.execute(statement)
            await conn.execute("INSERT INTO receiver_schema_version (version) VALUES (%s)", (target,))


async def _with_deliveries(conn: Connection, rows: Sequence[DictRow]) -> list[Job]:
    jobs = [_job(row) for row in rows]
    if not jobs:
        return jobs
    by_id = {job.id: job for job in jobs}
    for d in await (await conn.execute(JOB_DELIVERIES, ([job.id for job in jobs],))).fetchall():
        by_id[d["job_id"]].deliveries.append(
            Delivery(
                handler=d["handler"],
                status=DeliveryStatus(d["status"]),
                attempts=d["attempts"],
                last_error=d["last_error"],
                next_attempt_at=_utc(d["next_attempt_at"]),
                report=d["report"],
            )
        )
    return jobs


def _job(row: DictRow) -> Job:
    return Job(
        id=row["id"],
        provider=row["provider"],
        provider_job_id=row["provider_job_id"],
        model=row["model"],
        status=JobStatus(row["status"]),
        request=row["request"],
        metadata=row["metadata"],
        output_urls=row["output_urls"],
        error=JobError.from_json(row["error"]),
        progress=row["progress"],
        created_at=_utc(row["created_at"]) or datetime.now(UTC),
        submitted_at=_utc(row["submitted_at"]),
        completed_at=_utc(row["completed_at"]),
        completed_via=row["completed_via"],
        event_id=row["event_id"],
        deadline_at=_utc(row["deadline_at"]),
        poll_count=row["poll_count"],
    )


def _utc(moment: datetime | None) -> datetime | None:
    """timestamptz comes back in the session's time zone; the rest of the receiver speaks UTC."""
    return moment.astimezone(UTC) if moment is not None else None


def _connect_options(url: str) -> dict[str, Any]:
    given = conninfo_to_dict(url)
    options: dict[str, Any] = {"autocommit": False}
    if "connect_timeout" not in given:
        options["connect_timeout"] = CONNECT_TIMEOUT
    if "application_name" not in given:
        options["application_name"] = "kling-receiver"
    return options


def _passwords(url: str) -> list[str]:
    """The URL's password (in the authority or the query) as written and decoded: masked everywhere."""
    found: list[object] = []
    with suppress(ValueError):
        found.append(urlsplit(url).password)
    with suppress(psycopg.ProgrammingError):
        found.append(conninfo_to_dict(url).get("password"))
    return sorted(
        {v for p in found if isinstance(p, str) and p for v in (p, unquote(p))}, key=len, reverse=True
    )


def _safe(url: str, exc: BaseException) -> str:
    """The first line of a driver error, with the URL and its password masked."""
    text = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    for secret in sorted([url, *_passwords(url)], key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
