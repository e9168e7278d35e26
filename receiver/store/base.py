"""The job store: one small interface, so SQLite and PostgreSQL are interchangeable."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from receiver.completion import Finished, Running
from receiver.events import Job, JobError, JobStatus


@dataclass(frozen=True)
class Update:
    """A provider's report (from a webhook, a poll, a refused submit or the timeout)."""

    status: JobStatus
    provider_job_id: str | None = None
    progress: int | None = None
    output_urls: tuple[str, ...] = ()
    error: JobError | None = None
    cost: float | None = None  # the provider's figure, when its report names one
    finished_at: datetime | None = None  # when the provider says the job ended (ProviderStatus)


@dataclass(frozen=True)
class Recorded:
    """What `record` did: `terminal` is true only for the one call that ended the job; `conflict` when
    the report names another provider job than the one on record (nothing was changed)."""

    job: Job | None
    changed: bool
    terminal: bool
    conflict: bool = False
    leased: tuple[DueDelivery, ...] = ()  # the deliveries inserted leased (`record`'s `lease`)


@dataclass(frozen=True)
class Progressed:
    """What `record_progress` did: `status` is the job's status after it, None when there is no such
    job; `conflict` as in Recorded."""

    status: JobStatus | None
    changed: bool
    conflict: bool = False


@dataclass(frozen=True)
class Admission:
    """What `budget_admit` did: admitted (`request_id` set, to release with) or not, and then `wait`,
    the seconds until a slot may free (None while every slot waits for an answer)."""

    request_id: str | None
    wait: float | None = 0.0


@dataclass(frozen=True)
class DueDelivery:
    job_id: str
    handler: str
    attempts: int
    event: dict[str, Any]
    reports: dict[str, Any]


# A `budget` event gone dead: (provider, day, level, handler, attempts, last_error, event_id).
DeadBudget = tuple[str, str, int, str, int, str | None, str]


@dataclass(frozen=True)
class DueBudget:
    """A `budget` event owed to one handler: the level of the provider's budget reached on `day`."""

    provider: str
    day: str
    level: int
    handler: str
    attempts: int
    event: dict[str, Any]


@dataclass(frozen=True)
class JobCost:
    """One job's cost, with what `receiver costs --by` may group it by."""

    provider: str
    model: str
    metadata: dict[str, Any]
    cost: float


@dataclass(frozen=True)
class SpendLimit:
    """A provider's daily budget a new job must fit in: what its jobs created since `since` cost, the
    open ones with no cost yet counted at `estimate`, plus this one at `estimate`, at most `limit`."""

    limit: float
    estimate: float
    since: datetime

    def committed(self, spent: float, open_jobs: int) -> float:
        return spent + open_jobs * self.estimate

    def fits(self, committed: float) -> bool:
        return committed < self.limit and committed + self.estimate <= self.limit


class OverBudget(Exception):
    """`create_job` found the job's provider at its daily budget; nothing was written."""

    def __init__(self, committed: float) -> None:
        super().__init__(f"{committed:g} spent or committed today")
        self.committed = committed


@dataclass(frozen=True)
class HandlerRoute:
    """A handler the store makes a delivery row for when a job ends with a matching event."""

    name: str
    after: tuple[str, ...]

    def __hash__(self) -> int:
        return hash(self.name)


class Matcher(Protocol):
    def __call__(self, event: dict[str, Any]) -> list[HandlerRoute]: ...


class Store(Protocol):
    listening: bool  # notices from other processes arrive now (inside `listen`, on PostgreSQL)

    async def open(self) -> None:
        """Connect and create or migrate the schema."""

    async def close(self) -> None: ...

    def listen(
        self, wake: Callable[[], None], sleep: Callable[[float], Awaitable[None]], *, notices: bool = True
    ) -> AbstractAsyncContextManager[None]:
        """While inside, `wake()` once work becomes due now (a completion recorded, a job submitted, a poll
        brought forward, a replay): at once for this store's own writes, and with `notices` on PostgreSQL
        (LISTEN/NOTIFY) for every process's. `sleep` paces reconnecting a lost listen connection."""

    async def create_job(
        self, job: Job, deadline: datetime, look_at: datetime | None = None, spend: SpendLimit | None = None
    ) -> bool:
        """Insert a new job; one without a provider job id is looked at again at `look_at`. False when a
        job with its id exists already (nothing is written). With `spend`, the job must fit its
        provider's daily budget, checked and recorded in one transaction that every process's
        `create_job` for that provider waits its turn for; else OverBudget (nothing is written)."""

    async def queue_job(
        self, job_id: str, at: datetime, refusals: int, status: JobStatus = JobStatus.QUEUED
    ) -> None:
        """A `pending` job whose submit was held back or refused becomes `queued` (or, its answer lost,
        `unknown`), sent again at `at`."""

    async def claim_submits(
        self, status: JobStatus, now: datetime, limit: int, lease_seconds: float
    ) -> list[Job]:
        """Due jobs in `status` (`queued`, or `pending` past their lease) with no provider job id, made
        `pending` with a new lease, in one statement."""

    async def mark_submitted(
        self,
        job_id: str,
        provider_job_id: str,
        at: datetime,
        next_poll_at: datetime | None,
        attempts: list[dict[str, Any]] | None = None,
        cost: float | None = None,
    ) -> None:
        """The provider accepted the job (and `attempts`, when given, is its list of attempts now, and
        `cost` what the answer says it costs); a job already ended by an early webhook keeps its status."""

    async def fail_over(
        self,
        job_id: str,
        provider: str,
        webhook_url: str | None,
        fallbacks: list[str],
        attempts: list[dict[str, Any]],
    ) -> None:
        """An unsent job moves to the next provider (its webhook URL is that provider's)."""

    async def note_attempts(self, job_id: str, attempts: list[dict[str, Any]]) -> None:
        """Store the job's list of attempts."""

    async def record(
        self,
        job_id: str,
        update: Update,
        via: str | None,
        now: datetime,
        routes: Matcher,
        lease: datetime | None = None,
    ) -> Recorded:
        """Apply a report in one transaction; the move to a terminal status happens once, together
        with one delivery row per route that matches the final event. With `lease`, the deliveries
        due at once (those with no `after`) are inserted leased until then, to the caller, which runs
        them (`Recorded.leased`); the others, or all without `lease`, wake the workers that claim them."""

    async def record_progress(self, job_id: str, update: Update) -> Progressed:
        """Apply a report that does not end the job, by the same rules as `record`, with the least work:
        one statement, nothing written when it changes nothing, the commit shared with other reports
        recorded at the same moment (it is durable when this returns)."""

    async def get_job(self, job_id: str) -> Job | None: ...

    async def find_job(self, provider: str, provider_job_id: str) -> str | None:
        """The local id of the job the provider knows by this id."""

    async def list_jobs(self, status: str | None = None, limit: int = 100) -> list[Job]: ...

    async def claim_due_polls(
        self, now: datetime, limit: int, lease_seconds: float, due_by: datetime | None = None
    ) -> list[Job]:
        """Non-terminal jobs with a provider job id, unlocked at `now` and due by `due_by` (default
        `now`), soonest due first, leased in one statement."""

    async def pending_polls(self, now: datetime, limit: int, due_by: datetime) -> list[Job]:
        """The jobs `claim_due_polls` would lease by `due_by`, read without leasing them."""

    async def claim_chosen_polls(self, job_ids: list[str], now: datetime, lease_seconds: float) -> list[Job]:
        """Lease the jobs of `job_ids` that are still unleased at `now` and open (another process may
        have leased one since it was read): those, in one statement."""

    async def schedule_poll(
        self, job_id: str, next_poll_at: datetime | None, polled_at: datetime | None = None
    ) -> None:
        """Store the next poll time, count the poll (made at `polled_at`), and release the lease."""

    async def release_polls(self, job_ids: list[str]) -> None:
        """Release claimed polls that were not made: the jobs stay due as they were."""

    async def completion_samples(self, limit: int) -> list[Finished]:
        """The `limit` most recently completed successes: each one's kind and time from submit."""

    async def running_samples(
        self, now: datetime, limit: int, *, to_last_look: Collection[str] = ()
    ) -> list[Running]:
        """Up to `limit` jobs submitted and not finished: each one's kind and its age at `now`, or, for
        the providers in `to_last_look`, the seconds from submit to its last look (a job of theirs not
        looked at yet is left out)."""

    async def poll_soon(self, job_id: str, at: datetime) -> bool:
        """Bring the next poll forward (a webhook we could not use is confirmed by a status read);
        False when there is no such job."""

    async def overdue_jobs(self, now: datetime, limit: int) -> list[str]:
        """Ids of non-terminal jobs past their deadline."""

    async def claim_due_deliveries(
        self, now: datetime, limit: int, lease_seconds: float, job_ids: list[str] | None = None
    ) -> list[DueDelivery]:
        """Due deliveries whose `after` handlers have finished (only those of `job_ids`, when given),
        leased in one statement."""

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
        """delivered; or retry at `retry_at`; or dead when neither; the attempt, finished `at`, goes on
        the delivery's history. With `event_id`, only while the job's
        event is still that one (the worker passes the event it delivered)."""

    async def replay(self, job_id: str, routes: Matcher, now: datetime, handler: str | None = None) -> int:
        """Make the job's final event due again for its handlers; returns how many deliveries."""

    async def dead_deliveries(self, limit: int = 1000) -> list[tuple[str, str, int, str | None]]:
        """(job_id, handler, attempts, last_error) of the dead letters."""

    async def dead_budget_deliveries(self, limit: int = 1000) -> list[DeadBudget]:
        """(provider, day, level, handler, attempts, last_error, event_id) of the `budget` events gone
        dead."""

    async def budget_event(self, event_id: str) -> dict[str, Any] | None:
        """The `budget` event of that id, as it was sent; None when no level was noted with it."""

    async def replay_budget(self, event: dict[str, Any], handlers: Sequence[str], now: datetime) -> int:
        """Make the `budget` event due again at `now` for each of `handlers`, from a first attempt; how
        many."""

    async def replay_budget_dead(self, now: datetime) -> int:
        """Make every `budget` event gone dead due again at `now`, from its first attempt; how many."""

    async def ping(self) -> None:
        """Raise when the store cannot answer (for /healthz)."""

    async def next_due(self) -> datetime | None:
        """The earliest stored poll or delivery time: how long the worker may sleep."""

    async def counts(self) -> dict[str, dict[str, int]]:
        """{"jobs": {status: n}, "deliveries": {status: n}, "budget_deliveries": {status: n}}."""

    async def job_counts(self) -> dict[tuple[str, str], int]:
        """{(provider, status): n} for the metrics."""

    async def costs_since(self, since: datetime) -> list[JobCost]:
        """Every job created since `since` that has a cost."""

    async def spent_since(self, provider: str, since: datetime) -> tuple[float, int]:
        """What the provider's jobs created since `since` cost, and how many open ones have no cost yet."""

    async def last_cost(self, provider: str) -> float | None:
        """The cost the provider last reported for a job (above 0), if any."""

    async def budget_alert(
        self, event: dict[str, Any], handlers: Sequence[str], now: datetime, lease: datetime
    ) -> bool:
        """Note that a provider's budget reached a level on a day (the `budget` event's own fields), and
        owe the event to `handlers`, leased until `lease` (the caller sends them now), in one
        transaction: True for the one caller (of every process on the store) that noted it first."""

    async def claim_budget_deliveries(self, now: datetime, limit: int, lease: datetime) -> list[DueBudget]:
        """Lease up to `limit` owed `budget` events that are due and not leased (their sender stopped,
        or a retry is due)."""

    async def finish_budget_delivery(
        self, due: DueBudget, *, delivered: bool, error: str | None = None, retry_at: datetime | None = None
    ) -> None:
        """The end of an attempt: delivered, to retry at `retry_at`, or dead (neither)."""

    async def budget_admit(
        self, key: str, limit: int, window: float, now: datetime, stale_after: float
    ) -> Admission:
        """Start a request for the rate budget `key` if fewer than `limit` count at `now` (in flight, or
        answered within `window` seconds) and the key is not blocked; in one transaction that locks the
        key. A request in flight for `stale_after` seconds stops counting (its process died)."""

    async def budget_release(self, key: str, request_id: str, started_at: datetime, now: datetime) -> None:
        """The request's answer came back at `now`: it counts for one more window."""

    async def budget_penalize(self, key: str, until: datetime) -> None:
        """No request for `key` starts before `until` (a later block stays)."""
