"""The job store on either database: the only code that names a query (sql/*.sql); a connector runs them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import structlog

from receiver.completion import Finished, Kind, Running
from receiver.config import SettingsError
from receiver.events import Delivery, DeliveryStatus, Job, JobError, JobStatus, iso
from receiver.providers.ratelimit import slot_wait
from receiver.store.base import (
    Admission,
    DeadBudget,
    DueBudget,
    DueDelivery,
    JobCost,
    Matcher,
    OverBudget,
    Progressed,
    Recorded,
    SpendLimit,
    Update,
)
from receiver.store.coalesce import Coalesce, Outcomes
from receiver.store.connector import Connector, Row, Sleep, StoreUnavailable, Transaction, Work
from receiver.store.queries import load
from receiver.store.state import apply_update, finished_status, rank, replay_targets

log = structlog.get_logger()

T = TypeVar("T")

# Progress reports sharing one statement (where a statement costs a round trip): at most GROUP_MOST a
# statement, GROUPS_OUT statements out at once (the rest of the pool is left to the worker and submits).
GROUP_MOST, GROUPS_OUT = 64, 4


async def _outcome(call: Awaitable[T]) -> T | BaseException:
    """The result of `call`, or the exception it raised (Coalesce answers each report with its own)."""
    try:
        return await call
    except Exception as exc:
        return exc


class SQLStore:
    def __init__(self, connector: Connector) -> None:
        self.connector = connector
        self.queries = load(connector.dialect)
        self._advance_running = connector.in_process  # see advance_running in sql/queries.sql
        # advance_jobs has a row for every report that names a job, changed or not (see sql/sqlite.sql)
        self._advance_jobs_complete = connector.dialect == "postgres"
        # Where a statement costs a round trip, progress reports made at the same moment share one
        # (SQLite groups them into one transaction itself: connector.run_grouped).
        self._progress: Coalesce[tuple[str, Update], Progressed] | None = None
        if not connector.in_process:
            self._progress = Coalesce(self._progress_group, most=GROUP_MOST, parallel=GROUPS_OUT)
        self.origin = uuid.uuid4().hex  # signs this store's notices: its own process was woken already
        self.listening = False
        self._wakers: list[Callable[[], None]] = []

    def _q(self, name: str, **params: Any) -> tuple[str, dict[str, Any]]:
        return self.queries.bind(name, params)

    async def open(self) -> None:
        await self.connector.open()
        try:
            await self.connector.run(self._migrate)
        except BaseException:
            await self.connector.close()
            raise

    async def _migrate(self, tx: Transaction) -> None:
        """Bring the schema to the latest version in one transaction, one process at a time."""
        await tx.fetch(*self._q("lock_schema"))
        await tx.execute(*self._q("version_table"))
        (row,) = await tx.fetch(*self._q("schema_version"))
        version, latest = int(row["version"] or 0), self.queries.schema_version
        if version > latest:
            raise SettingsError(
                f"RECEIVER_DATABASE_URL: database schema {version} is newer than this receiver ({latest})"
            )
        for target in range(version + 1, latest + 1):
            for statement in self.queries.migrations[target]:
                await tx.execute(statement, {})
            await tx.execute(*self._q("record_version", version=target))

    async def close(self) -> None:
        if self._progress is not None:
            await self._progress.drain()
        await self.connector.close()

    @contextlib.asynccontextmanager
    async def listen(
        self, wake: Callable[[], None], sleep: Sleep, *, notices: bool = True
    ) -> AsyncIterator[None]:
        """While inside: `wake()` after this store commits work that is due now, and (with `notices`, on a
        database that has them) when another process's store does; `listening` says whether notices
        arrive now. `sleep` paces reconnecting after the listen connection is lost."""
        self._wakers.append(wake)
        listener = None
        if notices and self.connector.notifies:
            statement, _ = self._q("listen_wake")
            listener = asyncio.create_task(self.connector.listen(statement, self._notice, self._live, sleep))
        try:
            yield
        finally:
            self._wakers.remove(wake)
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
                self.listening = False

    def _notice(self, origin: str) -> None:
        if origin != self.origin:
            self._wake()

    def _live(self, live: bool) -> None:
        self.listening = live
        self._wake()  # notices sent while the connection was down are lost: look now

    def _wake(self) -> None:
        for wake in list(self._wakers):
            wake()

    async def _notify(self, tx: Transaction) -> None:
        """Inside a transaction that makes work due now: other processes hear of it when it commits."""
        if self.connector.notifies:
            await tx.send(*self._q("notify_wake", origin=self.origin))

    async def create_job(
        self, job: Job, deadline: datetime, look_at: datetime | None = None, spend: SpendLimit | None = None
    ) -> bool:
        async def work(tx: Transaction) -> bool:
            if spend is not None:
                await self._within(tx, job.provider, spend)
            inserted = await tx.fetch(
                *self._q(
                    "insert_job",
                    id=job.id,
                    provider=job.provider,
                    provider_job_id=job.provider_job_id,
                    model=job.model,
                    status=str(job.status),
                    request=job.request,
                    metadata=job.metadata,
                    created_at=job.created_at,
                    deadline_at=deadline,
                    next_poll_at=look_at,
                    webhook_url=job.webhook_url,
                    attempts=job.attempts,
                    fallbacks=job.fallbacks,
                )
            )
            return bool(inserted)

        return await self.connector.run(work)

    async def _within(self, tx: Transaction, provider: str, spend: SpendLimit) -> None:
        """Hold the provider's spend key (a row of the rate budget's key table, so no other process's
        check runs until this transaction ends), then check the budget; OverBudget when the job would
        not fit."""
        key = f"spend:{provider}"
        await tx.send(*self._q("budget_key", key=key))
        await tx.fetch(*self._q("lock_budget_key", key=key))
        (row,) = await tx.fetch(*self._q("spent_since", provider=provider, since=spend.since))
        committed = spend.committed(float(row["spent"]), int(row["open"]))
        if not spend.fits(committed):
            raise OverBudget(committed)

    async def mark_submitted(
        self,
        job_id: str,
        provider_job_id: str,
        at: datetime,
        next_poll_at: datetime | None,
        attempts: list[dict[str, Any]] | None = None,
        cost: float | None = None,
    ) -> None:
        query = self._q(
            "mark_submitted",
            id=job_id,
            provider_job_id=provider_job_id,
            submitted_at=at,
            next_poll_at=next_poll_at,
            attempts=attempts,
            cost=cost,
        )
        await self._execute_due(*query)  # a worker asleep past the first poll must plan again

    async def queue_job(
        self, job_id: str, at: datetime, refusals: int, status: JobStatus = JobStatus.QUEUED
    ) -> None:
        query = self._q("queue_job", id=job_id, at=at, refusals=refusals, status=str(status))
        await self._execute_due(*query)

    async def fail_over(
        self,
        job_id: str,
        provider: str,
        webhook_url: str | None,
        fallbacks: list[str],
        attempts: list[dict[str, Any]],
    ) -> None:
        query = self._q(
            "fail_over",
            id=job_id,
            provider=provider,
            webhook_url=webhook_url,
            fallbacks=fallbacks,
            attempts=attempts,
        )
        await self._execute(*query)

    async def note_attempts(self, job_id: str, attempts: list[dict[str, Any]]) -> None:
        await self._execute(*self._q("note_attempts", id=job_id, attempts=attempts))

    async def claim_submits(
        self, status: JobStatus, now: datetime, limit: int, lease_seconds: float
    ) -> list[Job]:
        lease = now + timedelta(seconds=lease_seconds)
        query = self._q("claim_submits", status=str(status), now=now, lease=lease, limit=limit)
        return [_job(row) for row in await self._write(query)]

    async def record(
        self,
        job_id: str,
        update: Update,
        via: str | None,
        now: datetime,
        routes: Matcher,
        lease: datetime | None = None,
    ) -> Recorded:
        recorded: Recorded | None = None
        text = ""  # the final event, as stored
        held: list[str] = []  # the handlers whose deliveries were inserted leased to the caller

        async def work(tx: Transaction) -> int:
            """The record; how many of its deliveries any worker may claim now (`_made_due`)."""
            nonlocal recorded, text
            held.clear()
            rows = await tx.fetch(*self._q("lock_job", id=job_id))
            change = apply_update(_job(rows[0]) if rows else None, update, via, now, routes)
            recorded = change.recorded
            job = change.recorded.job
            if job is None or not change.recorded.changed:
                return 0
            if change.event is None:
                progress = self._q(
                    "record_progress",
                    id=job_id,
                    status=str(job.status),
                    progress=job.progress,
                    provider_job_id=job.provider_job_id,
                    cost=job.cost,
                )
                await tx.send(*progress)
                return 0
            text = json.dumps(change.event)  # as text: PostgreSQL's json column keeps it as built
            end = self._q(
                "record_end",
                id=job_id,
                status=str(job.status),
                provider_job_id=job.provider_job_id,
                output_urls=list(job.output_urls),
                error=job.error.to_json() if job.error else None,
                progress=job.progress,
                completed_at=now,
                completed_via=via,
                event_id=job.event_id,
                cost=job.cost,
                finished_at=update.finished_at,
                event=text,
            )
            await tx.send(*end)
            for route in change.routes:
                row = {"job_id": job_id, "handler": route.name, "after": list(route.after)}
                # A corrected end makes the first end's deliveries due again, for the new event.
                if change.corrected:
                    await tx.send(*self._q("replay_delivery", next_attempt_at=now, **row))
                    continue
                until = lease if not route.after else None  # one `after` another waits for it
                await tx.send(*self._q("insert_delivery", next_attempt_at=now, locked_until=until, **row))
                if until is not None:
                    held.append(route.name)
            return len(change.routes) - len(held)

        await self._made_due(work)
        assert recorded is not None
        # Each its own copy of the event, as a claim reads it: one handler's changes never reach another.
        leased = tuple(DueDelivery(job_id, name, 0, json.loads(text), {}) for name in held)
        return replace(recorded, leased=leased)

    async def record_progress(self, job_id: str, update: Update) -> Progressed:
        if self._progress is not None:
            return await self._progress.submit((job_id, update))
        return await self._record_progress(job_id, update)

    async def _record_progress(self, job_id: str, update: Update) -> Progressed:
        advance = self._q("advance_job", **_report(job_id, update))
        running = self._advance_running_query(job_id, update)

        async def work(tx: Transaction) -> Progressed:
            if running is not None and await tx.execute(*running):
                return Progressed(JobStatus.RUNNING, changed=True)
            rows = await tx.fetch(*advance) or await tx.fetch(*self._q("job_brief", id=job_id))
            return await self._progressed(tx, job_id, update, rows[0] if rows else None)

        return await self.connector.run_grouped(work)

    async def advance_many(self, reports: Sequence[tuple[str, Update]]) -> list[Progressed]:
        """`record_progress` for each of `reports` (job id, report), in one statement for the group: a
        job reported twice waits for the next statement, so each report is applied whole, in order.
        Each statement commits on its own, as a lone report's does."""
        params = [_report(job_id, update) for job_id, update in reports]

        async def work(tx: Transaction) -> list[Progressed]:
            answers: dict[int, Progressed] = {}
            waiting = list(range(len(reports)))
            while waiting:
                wave: dict[str, int] = {}
                for i in waiting:
                    wave.setdefault(reports[i][0], i)
                statement = self._q("advance_jobs", reports=[params[i] for i in wave.values()])
                rows = {row["id"]: row for row in await tx.fetch(*statement)}
                for job_id, i in wave.items():
                    row = rows.get(job_id)
                    if row is None and not self._advance_jobs_complete:
                        brief = await tx.fetch(*self._q("job_brief", id=job_id))
                        row = brief[0] if brief else None
                    answers[i] = await self._progressed(tx, job_id, reports[i][1], row)
                waiting = [i for i in waiting if i not in answers]
            return [answers[i] for i in range(len(reports))]

        return await self.connector.run_grouped(work)

    async def _progressed(self, tx: Transaction, job_id: str, update: Update, row: Row | None) -> Progressed:
        """What a report did, from its job's row after advance_job (None: no such job)."""
        if row is None:
            return Progressed(None, changed=False)
        on_record, reported = row["provider_job_id"], update.provider_job_id
        if row["changed"] and on_record is None and reported is not None:  # none on record yet
            await tx.execute(*self._q("adopt_provider_job_id", id=job_id, provider_job_id=reported))
            return Progressed(JobStatus(row["status"]), changed=True)
        conflict = bool(on_record and reported and on_record != reported)
        return Progressed(JobStatus(row["status"]), changed=bool(row["changed"]), conflict=conflict)

    async def _progress_group(self, reports: list[tuple[str, Update]]) -> Outcomes[Progressed]:
        """Reports made at the same moment (Coalesce): a lone one by the lone statement, a group by one
        statement; should the database refuse the group for one report's value, each alone, so that one
        fails by itself. An unreachable database fails them all (each webhook is sent again)."""
        if len(reports) > 1:
            try:
                return await self.advance_many(reports)
            except StoreUnavailable:
                raise
            except Exception:
                log.warning("store.group_refused", reports=len(reports))
        return [await _outcome(self._record_progress(job_id, update)) for job_id, update in reports]

    def _advance_running_query(self, job_id: str, update: Update) -> tuple[str, dict[str, Any]] | None:
        """advance_running for `update`, when the store tries it first and the report is of its kind."""
        reported, progress = update.provider_job_id, update.progress
        if not self._advance_running or update.status is not JobStatus.RUNNING:
            return None
        if not reported or progress is None:
            return None
        return self._q("advance_running", id=job_id, progress=progress, provider_job_id=reported)

    async def get_job(self, job_id: str) -> Job | None:
        async def work(tx: Transaction) -> Job | None:
            rows = await tx.fetch(*self._q("get_job", id=job_id))
            jobs = await self._with_deliveries(tx, rows)
            return jobs[0] if jobs else None

        return await self.connector.run(work, write=False)

    async def find_job(self, provider: str, provider_job_id: str) -> str | None:
        rows = await self._read(self._q("find_job", provider=provider, provider_job_id=provider_job_id))
        return str(rows[0]["id"]) if rows else None

    async def list_jobs(self, status: str | None = None, limit: int = 100) -> list[Job]:
        async def work(tx: Transaction) -> list[Job]:
            rows = await tx.fetch(*self._q("list_jobs", status=status, limit=limit))
            return await self._with_deliveries(tx, rows)

        return await self.connector.run(work, write=False)

    async def claim_due_polls(
        self, now: datetime, limit: int, lease_seconds: float, due_by: datetime | None = None
    ) -> list[Job]:
        lease = now + timedelta(seconds=lease_seconds)
        query = self._q("claim_polls", now=now, due_by=due_by or now, lease=lease, limit=limit)
        rows = await self._write(query)
        return [_job(row) for row in rows]

    async def pending_polls(self, now: datetime, limit: int, due_by: datetime) -> list[Job]:
        rows = await self._read(self._q("pending_polls", now=now, due_by=due_by, limit=limit))
        return [_job(row) for row in rows]

    async def claim_chosen_polls(self, job_ids: list[str], now: datetime, lease_seconds: float) -> list[Job]:
        if not job_ids:
            return []
        lease = now + timedelta(seconds=lease_seconds)
        rows = await self._write(self._q("claim_chosen_polls", job_ids=job_ids, now=now, lease=lease))
        return [_job(row) for row in rows]

    async def schedule_poll(
        self, job_id: str, next_poll_at: datetime | None, polled_at: datetime | None = None
    ) -> None:
        query = self._q("schedule_poll", id=job_id, next_poll_at=next_poll_at, polled_at=polled_at)
        await self._execute(*query)

    async def release_polls(self, job_ids: list[str]) -> None:
        if job_ids:
            await self._execute(*self._q("release_polls", job_ids=job_ids))

    async def completion_samples(self, limit: int) -> list[Finished]:
        rows = await self._read(self._q("completion_samples", limit=limit))
        return [
            Finished.of(
                row["provider"],
                row["model"],
                _json(row["request"]),
                _moment(row["submitted_at"]),
                _moment(row["completed_at"]),
                _time(row["finished_at"]),
            )
            for row in rows
        ]

    async def running_samples(
        self, now: datetime, limit: int, *, to_last_look: Collection[str] = ()
    ) -> list[Running]:
        rows = await self._read(self._q("running_samples", limit=limit))
        samples = []
        for row in rows:
            until = _time(row["polled_at"]) if row["provider"] in to_last_look else now
            if until is not None:
                kind = Kind.of(row["provider"], row["model"], _json(row["request"]))
                samples.append(Running(kind, (until - _moment(row["submitted_at"])).total_seconds()))
        return samples

    async def poll_soon(self, job_id: str, at: datetime) -> bool:
        async def work(tx: Transaction) -> int:
            await tx.send(*self._q("poll_soon", id=job_id, at=at))
            return len(await tx.fetch(*self._q("job_exists", id=job_id)))

        return bool(await self._made_due(work))

    async def overdue_jobs(self, now: datetime, limit: int) -> list[str]:
        rows = await self._read(self._q("overdue_jobs", now=now, limit=limit))
        return [str(row["id"]) for row in rows]

    async def claim_due_deliveries(
        self, now: datetime, limit: int, lease_seconds: float, job_ids: list[str] | None = None
    ) -> list[DueDelivery]:
        lease = now + timedelta(seconds=lease_seconds)
        query = self._q("claim_deliveries", now=now, lease=lease, limit=limit, job_ids=job_ids)
        rows = await self._write(query)
        return [
            DueDelivery(
                job_id=row["job_id"],
                handler=row["handler"],
                attempts=row["attempts"],
                event=_json(row["event"]),
                reports=_json(row["reports"]),
            )
            for row in rows
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
        event_id: str | None = None,
        at: datetime | None = None,
    ) -> None:
        status = finished_status(delivered=delivered, retry_at=retry_at)
        entry = {"at": iso(at), "status": str(status), "error": error, "next_attempt_at": iso(retry_at)}
        query = self._q(
            "finish_delivery",
            job_id=job_id,
            handler=handler,
            status=str(status),
            last_error=error,
            next_attempt_at=retry_at,
            report=report,
            event_id=event_id,
            entry=json.dumps(entry, separators=(",", ":")) + "\n",
        )
        await self._execute(*query)

    async def replay(self, job_id: str, routes: Matcher, now: datetime, handler: str | None = None) -> int:
        async def work(tx: Transaction) -> int:
            rows = await tx.fetch(*self._q("job_event", id=job_id))
            if not rows or rows[0]["event"] is None:
                return 0
            existing = {r["handler"] for r in await tx.fetch(*self._q("delivery_handlers", job_id=job_id))}
            targets = replay_targets(_json(rows[0]["event"]), routes, handler, existing)
            for name, after in targets:
                delivery = self._q(
                    "replay_delivery", job_id=job_id, handler=name, next_attempt_at=now, after=list(after)
                )
                await tx.send(*delivery)
            return len(targets)

        return await self._made_due(work)

    async def dead_deliveries(self, limit: int = 1000) -> list[tuple[str, str, int, str | None]]:
        rows = await self._read(self._q("dead_deliveries", limit=limit))
        return [(r["job_id"], r["handler"], r["attempts"], r["last_error"]) for r in rows]

    async def dead_budget_deliveries(self, limit: int = 1000) -> list[DeadBudget]:
        rows = await self._read(self._q("dead_budget_deliveries", limit=limit))
        return [
            (
                r["provider"],
                r["day"],
                r["level"],
                r["handler"],
                r["attempts"],
                r["last_error"],
                str((_json(r["event"]) or {}).get("id", "")),
            )
            for r in rows
        ]

    async def budget_event(self, event_id: str) -> dict[str, Any] | None:
        rows = await self._read(self._q("budget_alert_by_event", event_id=event_id))
        return _json(rows[0]["event"]) if rows else None

    async def replay_budget(self, event: dict[str, Any], handlers: Sequence[str], now: datetime) -> int:
        budget = event["budget"]
        key = {"provider": budget["provider"], "day": budget["day"], "level": budget["level"]}

        async def work(tx: Transaction) -> int:
            for handler in handlers:
                await tx.send(*self._q("replay_budget_delivery", **key, handler=handler, now=now))
            return len(handlers)

        return await self._made_due(work)

    async def replay_budget_dead(self, now: datetime) -> int:
        async def work(tx: Transaction) -> int:
            return len(await tx.fetch(*self._q("replay_budget_dead", now=now)))

        return await self._made_due(work)

    async def ping(self) -> None:
        await self._read(self._q("ping"))

    async def next_due(self) -> datetime | None:
        rows = await self._read(self._q("next_due"))
        return _time(rows[0]["due"]) if rows else None

    async def counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {"jobs": {}, "deliveries": {}, "budget_deliveries": {}}
        for row in await self._read(self._q("counts")):
            counts[row["kind"]][row["status"]] = row["n"]
        return counts

    async def job_counts(self) -> dict[tuple[str, str], int]:
        rows = await self._read(self._q("job_counts"))
        return {(row["provider"], row["status"]): row["n"] for row in rows}

    async def costs_since(self, since: datetime) -> list[JobCost]:
        rows = await self._read(self._q("costs_since", since=since))
        return [JobCost(r["provider"], r["model"], _json(r["metadata"]), float(r["cost"])) for r in rows]

    async def spent_since(self, provider: str, since: datetime) -> tuple[float, int]:
        (row,) = await self._read(self._q("spent_since", provider=provider, since=since))
        return float(row["spent"]), int(row["open"])

    async def last_cost(self, provider: str) -> float | None:
        rows = await self._read(self._q("last_cost", provider=provider))
        return float(rows[0]["cost"]) if rows else None

    async def budget_alert(
        self, event: dict[str, Any], handlers: Sequence[str], now: datetime, lease: datetime
    ) -> bool:
        budget = event["budget"]
        key = {"provider": budget["provider"], "day": budget["day"], "level": budget["level"]}

        async def work(tx: Transaction) -> bool:
            if not await tx.fetch(*self._q("budget_alert", **key, now=now, event=event)):
                return False
            for handler in handlers:
                await tx.send(*self._q("budget_owed", **key, handler=handler, now=now, lease=lease))
            return True

        return await self.connector.run(work)

    async def claim_budget_deliveries(self, now: datetime, limit: int, lease: datetime) -> list[DueBudget]:
        rows = await self._write(self._q("claim_budget_deliveries", now=now, lease=lease, limit=limit))
        return [
            DueBudget(
                provider=row["provider"],
                day=row["day"],
                level=row["level"],
                handler=row["handler"],
                attempts=row["attempts"],
                event=_json(row["event"]),
            )
            for row in rows
        ]

    async def finish_budget_delivery(
        self, due: DueBudget, *, delivered: bool, error: str | None = None, retry_at: datetime | None = None
    ) -> None:
        status = finished_status(delivered=delivered, retry_at=retry_at)
        query = self._q(
            "finish_budget_delivery",
            provider=due.provider,
            day=due.day,
            level=due.level,
            handler=due.handler,
            status=str(status),
            last_error=error,
            next_attempt_at=retry_at,
        )
        await self._execute(*query)

    async def budget_admit(
        self, key: str, limit: int, window: float, now: datetime, stale_after: float
    ) -> Admission:
        async def work(tx: Transaction) -> Admission:
            await tx.send(*self._q("budget_key", key=key))
            (locked,) = await tx.fetch(*self._q("lock_budget_key", key=key))
            forget = self._q(
                "budget_forget",
                key=key,
                ended_before=now - timedelta(seconds=window),
                started_before=now - timedelta(seconds=stale_after),
            )
            await tx.send(*forget)
            (counted,) = await tx.fetch(*self._q("budget_count", key=key))
            blocked_until, first_end = _time(locked["blocked_until"]), _time(counted["first_end"])
            wait = slot_wait(
                counted["counting"],
                limit,
                (blocked_until - now).total_seconds() if blocked_until else 0.0,
                (first_end - now).total_seconds() + window if first_end else None,
            )
            if wait != 0:
                return Admission(None, wait)
            request_id = secrets.token_hex(12)
            await tx.send(*self._q("budget_start", id=request_id, key=key, started_at=now))
            return Admission(request_id)

        return await self.connector.run(work)

    async def budget_release(self, key: str, request_id: str, started_at: datetime, now: datetime) -> None:
        query = self._q("budget_end", id=request_id, key=key, started_at=started_at, ended_at=now)
        await self._execute(*query)

    async def budget_penalize(self, key: str, until: datetime) -> None:
        await self._execute(*self._q("budget_penalize", key=key, until=until))

    async def _with_deliveries(self, tx: Transaction, rows: list[Row]) -> list[Job]:
        jobs = [_job(row) for row in rows]
        if not jobs:
            return jobs
        by_id = {job.id: job for job in jobs}
        for d in await tx.fetch(*self._q("job_deliveries", job_ids=list(by_id))):
            by_id[d["job_id"]].deliveries.append(_delivery(d))
        return jobs

    async def _read(self, query: tuple[str, dict[str, Any]]) -> list[Row]:
        return await self.connector.run(lambda tx: tx.fetch(*query), write=False, single=True)

    async def _write(self, query: tuple[str, dict[str, Any]]) -> list[Row]:
        return await self.connector.run(lambda tx: tx.fetch(*query), single=True)

    async def _execute(self, sql: str, params: dict[str, Any]) -> None:
        await self.connector.run(lambda tx: tx.execute(sql, params), single=True)

    async def _made_due(self, work: Work[int]) -> int:
        """`work`, which makes some work due now and says how much: when any, other processes hear of it
        on commit, this one at once."""

        async def noted(tx: Transaction) -> int:
            count = await work(tx)
            if count:
                await self._notify(tx)
            return count

        count = await self.connector.run(noted)
        if count:
            self._wake()
        return count

    async def _execute_due(self, sql: str, params: dict[str, Any]) -> None:
        """A statement that brings work forward: other processes hear of it on commit, this one at once."""

        async def work(tx: Transaction) -> None:
            await tx.send(sql, params)
            await self._notify(tx)

        await self.connector.run(work)
        self._wake()


def _report(job_id: str, update: Update) -> dict[str, Any]:
    """advance_job's parameters for a report (advance_jobs takes a list of them)."""
    return {
        "id": job_id,
        "status": str(update.status),
        "rank": rank(update.status),
        "progress": update.progress,
        "provider_job_id": update.provider_job_id,
    }


def _job(row: Row) -> Job:
    return Job(
        id=row["id"],
        provider=row["provider"],
        provider_job_id=row["provider_job_id"],
        model=row["model"],
        status=JobStatus(row["status"]),
        request=_json(row["request"]),
        metadata=_json(row["metadata"]),
        output_urls=_json(row["output_urls"]),
        error=JobError.from_json(_json(row["error"])),
        progress=row["progress"],
        created_at=_moment(row["created_at"]),
        submitted_at=_time(row["submitted_at"]),
        completed_at=_time(row["completed_at"]),
        completed_via=row["completed_via"],
        event_id=row["event_id"],
        deadline_at=_time(row["deadline_at"]),
        poll_count=row["poll_count"],
        polled_at=_time(row["polled_at"]),
        next_poll_at=_time(row["next_poll_at"]),
        webhook_url=row["webhook_url"],
        refusals=row["refusals"],
        attempts=_json(row["attempts"]),
        fallbacks=_json(row["fallbacks"]),
        cost=row["cost"],
    )


def _delivery(row: Row) -> Delivery:
    return Delivery(
        handler=row["handler"],
        status=DeliveryStatus(row["status"]),
        attempts=row["attempts"],
        last_error=row["last_error"],
        next_attempt_at=_time(row["next_attempt_at"]),
        report=_json(row["report"]),
        history=[json.loads(line) for line in (row["history"] or "").splitlines()],
    )


def _json(value: Any) -> Any:
    """SQLite gives JSON as text; psycopg decodes json and jsonb columns itself."""
    return json.loads(value) if isinstance(value, str) else value


def _moment(value: str | datetime) -> datetime:
    """SQLite gives fixed-width UTC text; PostgreSQL a timestamptz in the session's time zone."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.astimezone(UTC)


def _time(value: str | datetime | None) -> datetime | None:
    return None if value is None else _moment(value)
