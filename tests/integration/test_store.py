"""Both stores, on a real SQLite file and on the local PostgreSQL: a job ends once, deliveries are claimed
once per lease, in `after` order."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from receiver.clock import VirtualClock
from receiver.completion import Kind
from receiver.events import DeliveryStatus, Job, JobError, JobStatus
from receiver.store import HandlerRoute, Store, Update, open_store

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
TIMEOUT = timedelta(hours=1)
DONE = Update(JobStatus.SUCCEEDED, output_urls=("https://cdn.example.com/v.mp4",))
FAILED = Update(JobStatus.FAILED, error=JobError("content_policy", "refused by the provider"))


class Routes:
    """A Matcher that also remembers the events it was asked about."""

    def __init__(self, *routes: HandlerRoute, failed_only: tuple[str, ...] = ()) -> None:
        self.routes = routes
        self.failed_only = failed_only
        self.seen: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> list[HandlerRoute]:
        self.seen.append(event)
        return [r for r in self.routes if event["type"] == "job.failed" or r.name not in self.failed_only]


LOG_AND_SLACK = Routes(HandlerRoute("log", ()), HandlerRoute("slack", ()))


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def _create(
    store: Store,
    job_id: str = "job_1",
    *,
    created: datetime = T0,
    provider: str = "runbase",
    submit: str | None = "rb_1",
    first_poll: float | None = 10.0,
    timeout: timedelta = TIMEOUT,
) -> None:
    job = Job(
        id=job_id,
        provider=provider,
        status=JobStatus.PENDING,
        request={"prompt": "a fox", "mode": "pro"},
        metadata={"campaign": "spring"},
        created_at=created,
    )
    await store.create_job(job, created + timeout)
    if submit is not None:
        poll_at = created + timedelta(seconds=first_poll) if first_poll is not None else None
        await store.mark_submitted(job_id, submit, created + timedelta(seconds=1), poll_at)


async def _job(store: Store, job_id: str = "job_1") -> Job:
    job = await store.get_job(job_id)
    assert job is not None
    return job


async def _finish(store: Store, job_id: str = "job_1", routes: Routes = LOG_AND_SLACK) -> None:
    assert (await store.record(job_id, DONE, "webhook", _at(150), routes)).terminal


def _deliveries(job: Job) -> dict[str, tuple[str, int, str | None]]:
    return {d.handler: (str(d.status), d.attempts, d.last_error) for d in job.deliveries}


@pytest.mark.anyio
async def test_create_then_get(store: Store) -> None:
    await _create(store, submit=None)
    job = await _job(store)
    assert job.id == "job_1"
    assert job.provider == "runbase"
    assert job.status is JobStatus.PENDING
    assert job.request == {"prompt": "a fox", "mode": "pro"}
    assert job.metadata == {"campaign": "spring"}
    assert job.created_at == T0
    assert job.deadline_at == T0 + TIMEOUT
    assert job.provider_job_id is None
    assert job.submitted_at is None
    assert job.deliveries == []
    assert await store.get_job("job_missing") is None


@pytest.mark.anyio
async def test_mark_submitted(store: Store) -> None:
    await _create(store)
    job = await _job(store)
    assert job.status is JobStatus.SUBMITTED
    assert job.provider_job_id == "rb_1"
    assert job.submitted_at == _at(1)


@pytest.mark.anyio
async def test_jobs_survive_closing_and_reopening_the_store(database_url: str) -> None:
    first = open_store(database_url)
    await first.open()
    await _create(first)
    await first.close()
    second = open_store(database_url)
    await second.open()
    try:
        assert (await _job(second)).provider_job_id == "rb_1"
    finally:
        await second.close()


@pytest.mark.anyio
async def test_progress_moves_status_forward_only(store: Store) -> None:
    await _create(store)
    running = await store.record(
        "job_1", Update(JobStatus.RUNNING, progress=30), "webhook", _at(20), LOG_AND_SLACK
    )
    assert (running.changed, running.terminal) == (True, False)
    assert running.job is not None
    assert (running.job.status, running.job.progress) == (JobStatus.RUNNING, 30)

    stale = await store.record(
        "job_1", Update(JobStatus.SUBMITTED, progress=10), "poll", _at(30), LOG_AND_SLACK
    )
    assert (stale.changed, stale.terminal) == (False, False)
    job = await _job(store)
    assert (job.status, job.progress) == (JobStatus.RUNNING, 30)

    await store.record("job_1", Update(JobStatus.RUNNING, progress=60), "webhook", _at(40), LOG_AND_SLACK)
    await store.record("job_1", Update(JobStatus.RUNNING), "poll", _at(50), LOG_AND_SLACK)
    job = await _job(store)
    assert (job.status, job.progress) == (JobStatus.RUNNING, 60)
    assert job.completed_at is None
    assert job.deliveries == []


@pytest.mark.anyio
async def test_record_for_an_unknown_job_does_nothing(store: Store) -> None:
    recorded = await store.record("job_missing", DONE, "webhook", _at(1), LOG_AND_SLACK)
    assert (recorded.job, recorded.changed, recorded.terminal) == (None, False, False)


@pytest.mark.anyio
async def test_first_terminal_record_ends_the_job_with_one_delivery_per_route(store: Store) -> None:
    await _create(store)
    recorded = await store.record("job_1", DONE, "webhook", _at(150), LOG_AND_SLACK)
    assert (recorded.changed, recorded.terminal) == (True, True)
    job = await _job(store)
    assert job.status is JobStatus.SUCCEEDED
    assert job.output_urls == ["https://cdn.example.com/v.mp4"]
    assert job.progress == 100
    assert job.completed_at == _at(150)
    assert job.completed_via == "webhook"
    assert job.event_id is not None
    assert job.event_id.startswith("evt_")
    assert _deliveries(job) == {"log": ("pending", 0, None), "slack": ("pending", 0, None)}


@pytest.mark.anyio
async def test_second_terminal_record_changes_nothing(store: Store) -> None:
    await _create(store)
    await _finish(store)
    before = await _job(store)
    for update, via in [(FAILED, "poll"), (DONE, "poll"), (Update(JobStatus.RUNNING, progress=5), "webhook")]:
        again = await store.record("job_1", update, via, _at(300), LOG_AND_SLACK)
        assert (again.changed, again.terminal) == (False, False)
    after = await _job(store)
    assert after.to_json() == before.to_json()
    assert after.event_id == before.event_id
    assert len(after.deliveries) == 2


@pytest.mark.anyio
async def test_failed_end_keeps_the_error_and_routes_the_failed_event(store: Store) -> None:
    routes = Routes(HandlerRoute("log", ()), HandlerRoute("pager", ()), failed_only=("pager",))
    await _create(store, "job_ok")
    await _create(store, "job_bad")
    await store.record("job_ok", DONE, "poll", _at(150), routes)
    await store.record("job_bad", FAILED, "poll", _at(150), routes)
    assert set(_deliveries(await _job(store, "job_ok"))) == {"log"}
    bad = await _job(store, "job_bad")
    assert set(_deliveries(bad)) == {"log", "pager"}
    assert bad.error == JobError("content_policy", "refused by the provider")
    assert bad.progress is None
    assert [e["type"] for e in routes.seen] == ["job.succeeded", "job.failed"]


@pytest.mark.anyio
async def test_stored_event_has_the_type_and_is_identical_on_later_reads(store: Store) -> None:
    await _create(store)
    await _finish(store, routes=Routes(HandlerRoute("log", ())))
    job = await _job(store)

    (first,) = await store.claim_due_deliveries(_at(150), 10, 60)
    assert first.event["id"] == job.event_id
    assert first.event["type"] == "job.succeeded"
    assert first.event["job"] == job.to_json(deliveries=False)
    assert first.event["created_at"] == "2026-01-01T12:02:30Z"

    await store.finish_delivery("job_1", "log", delivered=False, error="boom", retry_at=_at(200))
    (second,) = await store.claim_due_deliveries(_at(200), 10, 60)
    assert second.event == first.event
    assert second.attempts == 1


@pytest.mark.anyio
async def test_each_finished_attempt_goes_on_the_delivery_history(store: Store) -> None:
    await _create(store)
    await _finish(store, routes=Routes(HandlerRoute("log", ())))
    await store.claim_due_deliveries(_at(150), 10, 60)
    await store.finish_delivery("job_1", "log", delivered=False, error="503", retry_at=_at(200), at=_at(151))
    await store.claim_due_deliveries(_at(200), 10, 60)
    await store.finish_delivery("job_1", "log", delivered=True, at=_at(201))

    (delivery,) = (await _job(store)).deliveries
    assert delivery.history == [
        {
            "at": "2026-01-01T12:02:31Z",
            "status": "retrying",
            "error": "503",
            "next_attempt_at": "2026-01-01T12:03:20Z",
        },
        {"at": "2026-01-01T12:03:21Z", "status": "delivered", "error": None, "next_attempt_at": None},
    ]


@pytest.mark.anyio
async def test_failed_event_type(store: Store) -> None:
    await _create(store)
    await store.record("job_1", FAILED, None, _at(3600), Routes(HandlerRoute("log", ())))
    (due,) = await store.claim_due_deliveries(_at(3600), 10, 60)
    assert due.event["type"] == "job.failed"
    assert due.event["job"]["status"] == "failed"
    assert due.event["job"]["error"] == {"code": "content_policy", "message": "refused by the provider"}
    assert due.event["job"]["completed_via"] is None


@pytest.mark.anyio
async def test_claim_due_polls_takes_only_due_unlocked_live_submitted_jobs(store: Store) -> None:
    await _create(store, "job_due", first_poll=10)
    await _create(store, "job_later", first_poll=500)
    await _create(store, "job_unsubmitted", submit=None)
    await _create(store, "job_done", first_poll=10)
    await _finish(store, "job_done")
    await _create(store, "job_no_plan", first_poll=None)

    claimed = await store.claim_due_polls(_at(20), 10, lease_seconds=300)
    assert [j.id for j in claimed] == ["job_due"]
    assert claimed[0].provider_job_id == "rb_1"
    assert await store.claim_due_polls(_at(21), 10, lease_seconds=300) == []
    assert await store.claim_due_polls(_at(319), 10, lease_seconds=300) == []
    assert [j.id for j in await store.claim_due_polls(_at(320), 10, lease_seconds=300)] == ["job_due"]


@pytest.mark.anyio
async def test_claim_due_polls_honours_the_limit_oldest_due_first(store: Store) -> None:
    for n, first_poll in enumerate([30, 10, 20]):
        await _create(store, f"job_{n}", first_poll=first_poll)
    assert [j.id for j in await store.claim_due_polls(_at(60), 2, 300)] == ["job_1", "job_2"]
    assert [j.id for j in await store.claim_due_polls(_at(60), 2, 300)] == ["job_0"]


@pytest.mark.anyio
async def test_schedule_poll_releases_the_lease_and_counts(store: Store) -> None:
    await _create(store)
    await store.claim_due_polls(_at(10), 10, 300)
    await store.schedule_poll("job_1", _at(40))
    assert await store.claim_due_polls(_at(39), 10, 300) == []
    (job,) = await store.claim_due_polls(_at(40), 10, 300)
    assert job.poll_count == 1


@pytest.mark.anyio
async def test_schedule_poll_keeps_when_the_last_look_was_sent(store: Store) -> None:
    await _create(store)
    await store.claim_due_polls(_at(10), 10, 300)
    await store.schedule_poll("job_1", _at(40), _at(10))
    (job,) = await store.claim_due_polls(_at(40), 10, 300)
    assert (job.polled_at, job.next_poll_at) == (_at(10), _at(40))


@pytest.mark.anyio
async def test_released_polls_stay_due_uncounted(store: Store) -> None:
    for n in range(3):
        await _create(store, f"job_{n}", first_poll=10)
    claimed = await store.claim_due_polls(_at(10), 10, 300)
    await store.release_polls([job.id for job in claimed[:2]])
    again = await store.claim_due_polls(_at(10), 10, 300)
    assert sorted(j.id for j in again) == sorted(j.id for j in claimed[:2])
    assert {(j.poll_count, j.next_poll_at) for j in again} == {(0, _at(10))}
    await store.release_polls([])


@pytest.mark.anyio
async def test_pending_polls_reads_the_jobs_in_flight_without_leasing_them(store: Store) -> None:
    await _create(store, "job_due", first_poll=10)
    await _create(store, "job_later", first_poll=500)
    await _create(store, "job_beyond", first_poll=900)
    await _create(store, "job_unsubmitted", submit=None)
    await _create(store, "job_done", first_poll=10)
    await _finish(store, "job_done")
    await _create(store, "job_leased", first_poll=5)
    await store.claim_chosen_polls(["job_leased"], _at(5), 300)

    pending = await store.pending_polls(_at(20), 10, due_by=_at(620))
    assert [j.id for j in pending] == ["job_due", "job_later"]
    assert [j.id for j in await store.pending_polls(_at(20), 1, due_by=_at(620))] == ["job_due"]
    # Read, not leased: the same jobs are there to read, and to claim, again.
    assert [j.id for j in await store.pending_polls(_at(20), 10, due_by=_at(620))] == ["job_due", "job_later"]
    assert [j.id for j in await store.claim_due_polls(_at(20), 10, 300)] == ["job_due"]


@pytest.mark.anyio
async def test_claim_chosen_polls_leases_only_the_chosen_that_are_still_free(store: Store) -> None:
    for name in ("job_a", "job_b", "job_c"):
        await _create(store, name, first_poll=500)
    await _create(store, "job_done", first_poll=10)
    await _finish(store, "job_done")
    assert await store.claim_chosen_polls([], _at(20), 300) == []

    # A job not due yet may be chosen (the pool pays for its look); a finished one never is.
    got = await store.claim_chosen_polls(["job_a", "job_b", "job_done"], _at(20), 300)
    assert sorted(j.id for j in got) == ["job_a", "job_b"]
    # Leased now: another claim of them gets nothing until the lease ends or the look is scheduled.
    assert [j.id for j in await store.claim_chosen_polls(["job_a", "job_c"], _at(30), 300)] == ["job_c"]
    assert [j.id for j in await store.pending_polls(_at(30), 10, due_by=_at(620))] == []
    await store.schedule_poll("job_a", _at(600), _at(30))
    assert [j.id for j in await store.claim_chosen_polls(["job_a", "job_b"], _at(40), 300)] == ["job_a"]
    # job_b's lease, taken at 20 s, runs to 320 s.
    assert await store.claim_chosen_polls(["job_b"], _at(319), 300) == []
    assert [j.id for j in await store.claim_chosen_polls(["job_b"], _at(320), 300)] == ["job_b"]


@pytest.mark.anyio
async def test_completion_samples_are_the_newest_successes_with_their_time_from_submit(store: Store) -> None:
    for n in range(4):
        await _create(store, f"job_{n}")
    for n, seconds in enumerate((150, 160, 170)):
        assert (await store.record(f"job_{n}", DONE, "poll", _at(seconds), Routes())).terminal
    assert (await store.record("job_3", FAILED, "poll", _at(100), Routes())).terminal
    samples = await store.completion_samples(2)
    assert [s.seconds for s in samples] == [169.0, 159.0]  # submitted at 1 s; no failure, not the oldest
    assert samples[0].kind == Kind("runbase", "kling-3.0", "pro", "default", False)


@pytest.mark.anyio
async def test_completion_samples_take_the_end_the_provider_reports_within_submit_and_record(
    store: Store,
) -> None:
    """A reconciliation poll 300 s after a job that ended at 40 s (its webhook lost) teaches the model
    40 s, not 300 s; a provider's clock ahead of ours or behind it is held within submit and record."""
    for n in range(4):
        await _create(store, f"job_{n}")
    ends = {"job_0": _at(41), "job_1": _at(500), "job_2": _at(-5), "job_3": None}
    for n, (job_id, finished_at) in enumerate(ends.items()):
        done = dataclasses.replace(DONE, finished_at=finished_at)
        assert (await store.record(job_id, done, "poll", _at(301 + n), Routes())).terminal
    samples = await store.completion_samples(10)
    assert [s.seconds for s in samples] == [303.0, 0.0, 301.0, 40.0]  # newest first; submitted at 1 s


@pytest.mark.anyio
async def test_running_samples_are_the_submitted_unfinished_jobs_with_their_age(store: Store) -> None:
    for n in range(3):
        await _create(store, f"job_{n}", submit=f"rb_{n}")
    await _create(store, "job_queued", submit=None)
    assert (await store.record("job_0", DONE, "poll", _at(150), Routes())).terminal
    running = await store.running_samples(_at(101), 10)
    assert sorted(r.seconds for r in running) == [100.0, 100.0]  # submitted at 1 s; not the finished one
    assert running[0].kind == Kind("runbase", "kling-3.0", "pro", "default", False)
    assert len(await store.running_samples(_at(101), 1)) == 1


@pytest.mark.anyio
async def test_running_samples_count_a_webhook_provider_job_up_to_its_last_look(store: Store) -> None:
    """An Apiframe job is not known to run past its last look: the silence since may be a lost webhook.
    One never looked at tells nothing yet."""
    for n in range(3):
        await _create(store, f"job_{n}", provider="apiframe", submit=f"af_{n}")
    await _create(store, "job_rb", submit="rb_1")
    for n, seconds in enumerate((61, 81)):
        await store.claim_due_polls(_at(seconds), 10, 300)
        await store.schedule_poll(f"job_{n}", _at(seconds + 200), _at(seconds))
    running = await store.running_samples(_at(301), 10, to_last_look={"apiframe"})
    assert sorted((r.kind.provider, r.seconds) for r in running) == [
        ("apiframe", 60.0), ("apiframe", 80.0), ("runbase", 300.0)
    ]  # fmt: skip


@pytest.mark.anyio
async def test_poll_soon_only_brings_the_poll_forward(store: Store) -> None:
    await _create(store, first_poll=100)
    await store.poll_soon("job_1", _at(200))
    assert await store.next_due() == _at(100)
    await store.poll_soon("job_1", _at(5))
    assert [j.id for j in await store.claim_due_polls(_at(5), 10, 300)] == ["job_1"]


@pytest.mark.anyio
async def test_deliveries_wait_for_the_handlers_they_come_after(store: Store) -> None:
    routes = Routes(HandlerRoute("storage", ()), HandlerRoute("db", ("storage",)), HandlerRoute("log", ()))
    await _create(store)
    await _finish(store, routes=routes)

    first = await store.claim_due_deliveries(_at(150), 10, 60)
    assert sorted(d.handler for d in first) == ["log", "storage"]
    await store.finish_delivery("job_1", "log", delivered=True)
    await store.finish_delivery("job_1", "storage", delivered=False, error="503", retry_at=_at(160))
    assert await store.claim_due_deliveries(_at(155), 10, 60) == []

    (retry,) = await store.claim_due_deliveries(_at(160), 10, 60)
    assert retry.handler == "storage"
    # Inside the lease: storage is taken and db still waits on it.
    assert await store.claim_due_deliveries(_at(200), 10, 60) == []
    await store.finish_delivery("job_1", "storage", delivered=True, report={"urls": ["s3://b/job_1/0.mp4"]})

    (db,) = await store.claim_due_deliveries(_at(161), 10, 60)
    assert db.handler == "db"
    assert db.reports == {"storage": {"urls": ["s3://b/job_1/0.mp4"]}}


@pytest.mark.anyio
async def test_a_delivery_waiting_on_another_is_not_due_while_that_one_is_owed(store: Store) -> None:
    """Else a worker of another process spins while a slow `storage` upload runs in this one."""
    await _create(store, first_poll=None)
    await _finish(store, routes=Routes(HandlerRoute("storage", ()), HandlerRoute("db", ("storage",))))
    await store.claim_due_deliveries(_at(150), 10, 60)
    assert await store.next_due() == _at(210)  # storage's lease, not db's due time (150)
    await store.finish_delivery("job_1", "storage", delivered=False, error="503", retry_at=_at(170))
    assert await store.next_due() == _at(170)
    await store.finish_delivery("job_1", "storage", delivered=True)
    assert await store.next_due() == _at(150)


@pytest.mark.anyio
async def test_a_dead_predecessor_frees_the_delivery_waiting_on_it(store: Store) -> None:
    await _create(store)
    await _finish(store, routes=Routes(HandlerRoute("storage", ()), HandlerRoute("db", ("storage",))))
    (storage,) = await store.claim_due_deliveries(_at(150), 10, 60)
    await store.finish_delivery("job_1", storage.handler, delivered=False, error="bucket gone")
    (db,) = await store.claim_due_deliveries(_at(151), 10, 60)
    assert db.handler == "db"
    assert db.reports == {}


@pytest.mark.anyio
async def test_claimed_delivery_is_leased(store: Store) -> None:
    await _create(store)
    await _finish(store, routes=Routes(HandlerRoute("log", ())))
    assert len(await store.claim_due_deliveries(_at(150), 10, 60)) == 1
    assert await store.claim_due_deliveries(_at(150), 10, 60) == []
    assert await store.claim_due_deliveries(_at(209), 10, 60) == []
    (again,) = await store.claim_due_deliveries(_at(210), 10, 60)
    assert (again.handler, again.attempts) == ("log", 0)


@pytest.mark.anyio
async def test_a_record_with_a_lease_inserts_the_deliveries_due_at_once_leased_and_returns_them(
    store: Store,
) -> None:
    routes = Routes(HandlerRoute("storage", ()), HandlerRoute("db", ("storage",)), HandlerRoute("log", ()))
    await _create(store)
    recorded = await store.record("job_1", DONE, "webhook", _at(150), routes, lease=_at(210))

    # Those due at once, with the event as a claim would give them; `db` waits on `storage`.
    assert sorted((d.handler, d.attempts, d.reports) for d in recorded.leased) == [
        ("log", 0, {}),
        ("storage", 0, {}),
    ]
    assert await store.claim_due_deliveries(_at(150), 10, 60) == []  # no other worker takes them
    await store.finish_delivery("job_1", "storage", delivered=True, report={"urls": ["s3://b/1.mp4"]})
    (db,) = await store.claim_due_deliveries(_at(151), 10, 60)
    assert (db.handler, db.reports) == ("db", {"storage": {"urls": ["s3://b/1.mp4"]}})
    # The holder stopped before `log` ran: it is anyone's once its lease runs out.
    assert await store.claim_due_deliveries(_at(209), 10, 60) == []
    (log,) = await store.claim_due_deliveries(_at(210), 10, 60)
    assert (log.handler, log.attempts) == ("log", 0)
    assert all(d.job_id == "job_1" and d.event == log.event == db.event for d in recorded.leased)
    assert log.event["type"] == "job.succeeded"
    first, second = recorded.leased
    assert first.event["job"] is not second.event["job"]  # a handler that changes its event changes its own


@pytest.mark.anyio
async def test_a_worker_asleep_wakes_when_a_records_lease_runs_out(store: Store) -> None:
    await _create(store, first_poll=None)
    await store.record("job_1", DONE, "webhook", _at(150), LOG_AND_SLACK, lease=_at(210))
    assert await store.next_due() == _at(210)


@pytest.mark.anyio
async def test_a_record_without_a_lease_or_that_changes_nothing_leases_nothing(store: Store) -> None:
    await _create(store)
    assert (await store.record("job_1", DONE, "webhook", _at(150), LOG_AND_SLACK)).leased == ()
    again = await store.record("job_1", DONE, "webhook", _at(151), LOG_AND_SLACK, lease=_at(210))
    assert (again.terminal, again.leased) == (False, ())
    assert len(await store.claim_due_deliveries(_at(151), 10, 60)) == 2


@pytest.mark.anyio
async def test_finish_delivery_counts_attempts(store: Store) -> None:
    await _create(store)
    await _finish(store)
    await store.claim_due_deliveries(_at(150), 10, 60)
    await store.finish_delivery("job_1", "log", delivered=True)
    await store.finish_delivery(
        "job_1", "slack", delivered=False, error="503 Service Unavailable", retry_at=_at(160)
    )
    assert _deliveries(await _job(store)) == {
        "log": ("delivered", 1, None),
        "slack": ("retrying", 1, "503 Service Unavailable"),
    }
    await store.claim_due_deliveries(_at(160), 10, 60)
    await store.finish_delivery("job_1", "slack", delivered=False, error="invalid_token")
    job = await _job(store)
    assert _deliveries(job)["slack"] == ("dead", 2, "invalid_token")
    assert job.deliveries[1].status is DeliveryStatus.DEAD
    assert await store.claim_due_deliveries(_at(10_000), 10, 60) == []


@pytest.mark.anyio
async def test_dead_deliveries_lists_the_dead_letters(store: Store) -> None:
    assert await store.dead_deliveries() == []
    await _create(store)
    await _finish(store)
    await store.finish_delivery("job_1", "log", delivered=True)
    await store.finish_delivery("job_1", "slack", delivered=False, error="channel_not_found")
    assert await store.dead_deliveries() == [("job_1", "slack", 1, "channel_not_found")]


@pytest.mark.anyio
async def test_replay_resets_to_pending_with_the_same_event(store: Store) -> None:
    await _create(store)
    await _finish(store)
    first = {d.handler: d.event for d in await store.claim_due_deliveries(_at(150), 10, 60)}
    await store.finish_delivery("job_1", "log", delivered=True)
    await store.finish_delivery("job_1", "slack", delivered=False, error="gone")

    assert await store.replay("job_1", LOG_AND_SLACK, _at(1000)) == 2
    assert _deliveries(await _job(store)) == {"log": ("pending", 0, None), "slack": ("pending", 0, None)}
    assert await store.claim_due_deliveries(_at(999), 10, 60) == []
    again = {d.handler: d.event for d in await store.claim_due_deliveries(_at(1000), 10, 60)}
    assert again == first
    assert await store.dead_deliveries() == []


@pytest.mark.anyio
async def test_replay_of_one_handler(store: Store) -> None:
    await _create(store)
    await _finish(store)
    await store.finish_delivery("job_1", "log", delivered=True)
    await store.finish_delivery("job_1", "slack", delivered=True)
    assert await store.replay("job_1", LOG_AND_SLACK, _at(1000), handler="slack") == 1
    assert _deliveries(await _job(store)) == {"log": ("delivered", 1, None), "slack": ("pending", 0, None)}
    assert await store.replay("job_1", LOG_AND_SLACK, _at(1000), handler="nobody") == 0


@pytest.mark.anyio
async def test_replay_of_an_unfinished_or_unknown_job_does_nothing(store: Store) -> None:
    await _create(store)
    assert await store.replay("job_1", LOG_AND_SLACK, _at(10)) == 0
    assert await store.replay("job_missing", LOG_AND_SLACK, _at(10)) == 0
    assert (await _job(store)).deliveries == []


@pytest.mark.anyio
async def test_next_due_is_the_earliest_poll_delivery_or_deadline(store: Store) -> None:
    assert await store.next_due() is None
    await _create(store, "job_a", first_poll=40)
    assert await store.next_due() == _at(40)
    await _create(store, "job_b", first_poll=100, timeout=timedelta(seconds=30))
    assert await store.next_due() == _at(30)
    await _create(store, "job_c", first_poll=10)
    await store.record("job_c", DONE, "webhook", _at(5), Routes(HandlerRoute("log", ())))
    assert await store.next_due() == _at(5)
    await store.finish_delivery("job_c", "log", delivered=True)
    assert await store.next_due() == _at(30)


@pytest.mark.anyio
async def test_mark_submitted_keeps_a_status_set_by_an_early_webhook(store: Store) -> None:
    await _create(store, submit=None)
    assert (await store.record("job_1", DONE, "webhook", _at(1), LOG_AND_SLACK)).terminal
    await store.mark_submitted("job_1", "rb_1", _at(2), _at(10))
    job = await _job(store)
    assert job.status is JobStatus.SUCCEEDED
    assert job.provider_job_id == "rb_1"
    assert job.completed_via == "webhook"
    assert await store.claim_due_polls(_at(100), 10, 300) == []


@pytest.mark.anyio
async def test_mark_submitted_keeps_running_from_an_early_progress_report(store: Store) -> None:
    await _create(store, submit=None)
    await store.record("job_1", Update(JobStatus.RUNNING, progress=5), "webhook", _at(1), LOG_AND_SLACK)
    await store.mark_submitted("job_1", "rb_1", _at(2), _at(10))
    assert (await _job(store)).status is JobStatus.RUNNING


@pytest.mark.anyio
async def test_list_jobs_newest_first_and_by_status(store: Store) -> None:
    clock = VirtualClock(T0)
    for n in range(4):
        await _create(store, f"job_{n}", created=clock())
        clock.advance(60)
    await _finish(store, "job_1")
    await _finish(store, "job_3")
    assert [j.id for j in await store.list_jobs()] == ["job_3", "job_2", "job_1", "job_0"]
    assert [j.id for j in await store.list_jobs(status="succeeded")] == ["job_3", "job_1"]
    assert [j.id for j in await store.list_jobs(status="submitted")] == ["job_2", "job_0"]
    assert await store.list_jobs(status="failed") == []
    assert [j.id for j in await store.list_jobs(limit=2)] == ["job_3", "job_2"]


@pytest.mark.anyio
async def test_list_jobs_created_in_the_same_instant_newest_insert_first(store: Store) -> None:
    for n in range(3):
        await _create(store, f"job_{n}")
    assert [j.id for j in await store.list_jobs()] == ["job_2", "job_1", "job_0"]


@pytest.mark.anyio
async def test_overdue_jobs_are_live_jobs_past_their_deadline(store: Store) -> None:
    await _create(store, "job_late", timeout=timedelta(seconds=60))
    await _create(store, "job_later", timeout=timedelta(seconds=120))
    await _create(store, "job_done", timeout=timedelta(seconds=30))
    await _finish(store, "job_done")
    await _create(store, "job_fine")
    assert await store.overdue_jobs(_at(59), 10) == []
    assert await store.overdue_jobs(_at(60), 10) == ["job_late"]
    assert await store.overdue_jobs(_at(500), 10) == ["job_late", "job_later"]
    assert await store.overdue_jobs(_at(500), 1) == ["job_late"]


@pytest.mark.anyio
async def test_counts_by_status(store: Store) -> None:
    await _create(store, "job_a")
    await _create(store, "job_b")
    await _finish(store, "job_b")
    await store.finish_delivery("job_b", "log", delivered=True)
    assert await store.budget_alert(_budget_event(80), ["slack", "alerts"], _at(0), _at(0))
    (owed, *_) = await store.claim_budget_deliveries(_at(0), 1, _at(30))
    await store.finish_budget_delivery(owed, delivered=False, error="gone")
    assert await store.counts() == {
        "jobs": {"submitted": 1, "succeeded": 1},
        "deliveries": {"delivered": 1, "pending": 1},
        "budget_deliveries": {"dead": 1, "pending": 1},
    }


@pytest.mark.anyio
async def test_job_counts_by_provider_and_status(store: Store) -> None:
    await _create(store, "job_a")
    await _create(store, "job_b", provider="apiframe", submit="af_1")
    await _create(store, "job_c", provider="apiframe", submit="af_2")
    await _finish(store, "job_c")
    assert await store.job_counts() == {
        ("runbase", "submitted"): 1,
        ("apiframe", "submitted"): 1,
        ("apiframe", "succeeded"): 1,
    }


@pytest.mark.anyio
async def test_racing_terminal_records_end_the_job_once(store: Store) -> None:
    await _create(store)
    routes = Routes(HandlerRoute("log", ()))
    results = []
    async with anyio.create_task_group() as tg:
        for update, via in [(DONE, "webhook"), (FAILED, "poll")] * 4:

            async def record(update: Update = update, via: str = via) -> None:
                results.append(await store.record("job_1", update, via, _at(150), routes))

            tg.start_soon(record)
    assert sum(r.terminal for r in results) == 1
    assert len((await _job(store)).deliveries) == 1


async def _claimed_by_two_stores(
    store: Store, database_url: str, claim: Callable[[Store], Awaitable[list[Any]]]
) -> list[Any]:
    """What six claims at once, three by `store` and three by another store on its database (another
    process), took."""
    other = open_store(database_url)
    await other.open()
    try:
        claimed: list[list[Any]] = []
        async with anyio.create_task_group() as tg:
            for s in [store, other] * 3:

                async def one(s: Store = s) -> None:
                    claimed.append(await claim(s))

                tg.start_soon(one)
    finally:
        await other.close()
    return [item for batch in claimed for item in batch]


@pytest.mark.anyio
async def test_two_stores_on_one_database_never_claim_the_same_job(store: Store, database_url: str) -> None:
    for n in range(20):
        await _create(store, f"job_{n}", first_poll=10)
    jobs = await _claimed_by_two_stores(store, database_url, lambda s: s.claim_due_polls(_at(20), 4, 300))
    ids = [job.id for job in jobs]
    assert len(ids) == len(set(ids)) == 20


@pytest.mark.anyio
async def test_an_attempt_for_a_replaced_event_does_not_close_the_new_events_delivery(store: Store) -> None:
    """We end the job (timeout); its `failed` event is being delivered when the provider's own final
    report replaces that end. The old attempt finishing must leave the new event's delivery due."""
    routes = Routes(HandlerRoute("log", ()))
    await _create(store)
    ours = Update(JobStatus.FAILED, error=JobError("timeout", "no final status before the deadline"))
    assert (await store.record("job_1", ours, None, _at(3600), routes)).terminal
    (old,) = await store.claim_due_deliveries(_at(3600), 10, 60)
    assert old.event["type"] == "job.failed"

    assert (await store.record("job_1", DONE, "webhook", _at(3601), routes)).terminal
    await store.finish_delivery("job_1", "log", delivered=True, event_id=old.event["id"])

    (new,) = await store.claim_due_deliveries(_at(3602), 10, 60)
    assert new.event["type"] == "job.succeeded"
    assert new.event["id"] != old.event["id"]
    await store.finish_delivery("job_1", "log", delivered=True, event_id=new.event["id"])
    assert _deliveries(await _job(store)) == {"log": ("delivered", 1, None)}


def _budget_event(level: int) -> dict[str, Any]:
    budget = {"provider": "apiframe", "day": "2026-01-01", "level": level, "spent": 40.0, "limit": 50.0}
    return {"id": f"evt_{level}", "type": "budget", "created_at": "2026-01-01T12:00:00Z", "budget": budget}


@pytest.mark.anyio
async def test_a_budget_level_is_owed_to_its_handlers_once_and_leased_to_the_process_that_noted_it(
    store: Store,
) -> None:
    """The first to note the level owes the event to the handlers and holds them until its lease ends:
    a second note (another process, the same level) owes nothing. Once the lease is over, what was not
    finished (its sender stopped) is claimed again, with the event, once per lease."""
    event = _budget_event(80)
    assert await store.budget_alert(event, ["slack", "alerts"], _at(0), _at(30))
    assert not await store.budget_alert(_budget_event(80), ["slack"], _at(1), _at(31))
    assert await store.claim_budget_deliveries(_at(29), 10, _at(90)) == []
    assert await store.next_due() == _at(30)

    claimed = await store.claim_budget_deliveries(_at(30), 10, _at(90))
    assert sorted(due.handler for due in claimed) == ["alerts", "slack"]
    assert {(due.provider, due.day, due.level, due.attempts) for due in claimed} == {
        ("apiframe", "2026-01-01", 80, 0)
    }
    assert all(due.event == event for due in claimed)
    assert await store.claim_budget_deliveries(_at(60), 10, _at(120)) == []


@pytest.mark.anyio
async def test_a_budget_event_that_failed_is_due_again_at_its_retry_and_a_delivered_one_never(
    store: Store,
) -> None:
    assert await store.budget_alert(_budget_event(100), ["slack", "alerts"], _at(0), _at(0))
    claimed = {due.handler: due for due in await store.claim_budget_deliveries(_at(0), 10, _at(30))}
    await store.finish_budget_delivery(claimed["slack"], delivered=True)
    failed = claimed["alerts"]
    await store.finish_budget_delivery(failed, delivered=False, error="HTTPError: 503", retry_at=_at(45))
    assert await store.next_due() == _at(45)
    assert await store.claim_budget_deliveries(_at(44), 10, _at(74)) == []

    (again,) = await store.claim_budget_deliveries(_at(45), 10, _at(75))
    assert (again.handler, again.attempts) == ("alerts", 1)
    await store.finish_budget_delivery(again, delivered=False, error="HTTPError: 503")  # dead: no retry
    assert await store.claim_budget_deliveries(_at(10**5), 10, _at(10**5 + 30)) == []
    assert await store.next_due() is None


@pytest.mark.anyio
async def test_a_budget_event_is_found_by_its_id_and_replayed_from_a_first_attempt_for_the_handlers_named(
    store: Store,
) -> None:
    event = _budget_event(80)
    assert await store.budget_alert(event, ["slack", "alerts"], _at(0), _at(0))
    claimed = {due.handler: due for due in await store.claim_budget_deliveries(_at(0), 10, _at(30))}
    await store.finish_budget_delivery(claimed["slack"], delivered=True)
    await store.finish_budget_delivery(claimed["alerts"], delivered=False, error="gone")  # dead
    assert await store.budget_event("evt_80") == event
    assert await store.budget_event("evt_100") is None
    assert [row[3:] for row in await store.dead_budget_deliveries()] == [("alerts", 1, "gone", "evt_80")]

    assert await store.replay_budget(event, ["alerts", "pager"], _at(50)) == 2  # pager: configured since
    assert await store.dead_budget_deliveries() == []
    assert await store.next_due() == _at(50)
    replayed = await store.claim_budget_deliveries(_at(50), 10, _at(80))
    assert sorted((due.handler, due.attempts, due.event) for due in replayed) == [
        ("alerts", 0, event),
        ("pager", 0, event),
    ]


@pytest.mark.anyio
async def test_two_stores_on_one_database_never_claim_the_same_budget_event(
    store: Store, database_url: str
) -> None:
    for level in (80, 100):
        handlers = [f"handler_{n}" for n in range(10)]
        assert await store.budget_alert(_budget_event(level), handlers, _at(0), _at(0))
    owed = await _claimed_by_two_stores(
        store, database_url, lambda s: s.claim_budget_deliveries(_at(1), 4, _at(60))
    )
    keys = [(due.level, due.handler) for due in owed]
    assert len(keys) == len(set(keys)) == 20
