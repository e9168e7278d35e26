"""The job state machine, whatever the database: how a report changes a job, what a replay re-sends."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from receiver.events import TERMINAL, Delivery, DeliveryStatus, Job, JobStatus, make_event, new_event_id
from receiver.store.base import HandlerRoute, Matcher, Recorded, Update

_RANK = {
    JobStatus.PENDING: 0,
    JobStatus.QUEUED: 0,
    JobStatus.UNKNOWN: 0,
    JobStatus.SUBMITTED: 1,
    JobStatus.RUNNING: 2,
}
# Ends the receiver chose for lack of knowledge, not reported by a provider: a provider's final report
# that comes later replaces them (a job's fate is never worse than the provider's truth).
UNCERTAIN_ERRORS = frozenset({"submit_unknown", "timeout"})
PROVIDER_ROADS = ("webhook", "poll")


def rank(status: JobStatus) -> int:
    """How far a live status is along (a report never moves a job back); the SQL of `advance_job`
    holds the same ranks."""
    return _RANK[status]


@dataclass(frozen=True)
class Change:
    """What `record` must write. `event` is set only when the job ends now: the store then writes the
    final columns from `recorded.job`, the event, and a delivery row per route; a change without an
    event writes `status`, `progress` and `provider_job_id`; an unchanged record writes nothing.
    `corrected`: the job had ended by the receiver's own uncertainty and ends again with the provider's
    report, so its deliveries (already made for the first end) are made due again for the new event."""

    recorded: Recorded
    event: dict[str, Any] | None = None
    routes: tuple[HandlerRoute, ...] = ()
    corrected: bool = False


def uncertain_end(job: Job) -> bool:
    """The job ended `failed` because the receiver could not tell (a lost submit answer, no final
    status before the deadline), not because a provider said so."""
    return (
        job.status is JobStatus.FAILED
        and job.completed_via is None
        and job.error is not None
        and job.error.code in UNCERTAIN_ERRORS
    )


def apply_update(job: Job | None, update: Update, via: str | None, now: datetime, routes: Matcher) -> Change:
    """Apply a report to the job as read (and locked) in the store's transaction; mutates `job`."""
    if job is None:
        return Change(Recorded(job=None, changed=False, terminal=False))
    if job.provider_job_id and update.provider_job_id and update.provider_job_id != job.provider_job_id:
        return Change(Recorded(job=job, changed=False, terminal=False, conflict=True))
    corrected = job.status in TERMINAL
    if corrected and not (update.status in TERMINAL and via in PROVIDER_ROADS and uncertain_end(job)):
        return Change(Recorded(job=job, changed=False, terminal=False))
    provider_job_id = job.provider_job_id or update.provider_job_id
    if update.status not in TERMINAL:
        status = max(job.status, update.status, key=lambda s: _RANK[s])
        progress = (
            max(job.progress or 0, update.progress or 0) if update.progress is not None else job.progress
        )
        cost = job.cost if update.cost is None else update.cost
        before = (job.status, job.progress, job.provider_job_id, job.cost)
        changed = (status, progress, provider_job_id, cost) != before
        job.status, job.progress, job.provider_job_id, job.cost = status, progress, provider_job_id, cost
        return Change(Recorded(job=job, changed=changed, terminal=False))
    job.status = update.status
    job.provider_job_id = provider_job_id
    job.output_urls = list(update.output_urls)
    job.error = update.error
    if update.cost is not None:
        job.cost = update.cost
    job.completed_at = now
    job.completed_via = via
    if update.status is JobStatus.SUCCEEDED:
        job.progress = 100
    job.event_id = new_event_id()
    event = make_event(job, job.event_id, now=now)
    matched = tuple(routes(event))
    if corrected:
        job.deliveries = [d for d in job.deliveries if d.handler not in {r.name for r in matched}]
    job.deliveries.extend(
        Delivery(handler=route.name, status=DeliveryStatus.PENDING, next_attempt_at=now) for route in matched
    )
    recorded = Recorded(job=job, changed=True, terminal=True)
    return Change(recorded, event=event, routes=matched, corrected=corrected)


def replay_targets(
    event: dict[str, Any], routes: Matcher, handler: str | None, existing: set[str]
) -> list[tuple[str, tuple[str, ...]]]:
    """(handler, after) of the deliveries a replay makes due again: the routes that match the event,
    or one named handler; a handler no longer configured is replayed only when it has a delivery."""
    wanted = [r for r in routes(event) if handler in (None, r.name)]
    if handler is not None and not wanted and handler in existing:
        return [(handler, ())]
    return [(r.name, r.after) for r in wanted]


def finished_status(*, delivered: bool, retry_at: datetime | None) -> DeliveryStatus:
    if delivered:
        return DeliveryStatus.DELIVERED
    return DeliveryStatus.RETRYING if retry_at is not None else DeliveryStatus.DEAD
