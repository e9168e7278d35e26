"""The job state machine under any order and repetition of provider reports, from both roads.

A job's reports are drawn as the providers can send them (queued, running with or without progress,
succeeded with or without outputs, failed, canceled), in any order, any of them repeated, arriving by
webhook or by poll, with the provider's acceptance (`mark_submitted`) at any point among them. They go
through `Receiver.record`, the one call both roads make, into a real SQLStore on SQLite in a temporary
file: one store for the module, a new job per example. The pure transition, `apply_update`, is checked
on its own too.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers import HandlerSpec, build_handlers
from receiver.clock import VirtualClock
from receiver.config import Settings
from receiver.events import TERMINAL, Job, JobError, JobStatus, event_type, new_job_id
from receiver.providers import apiframe
from receiver.providers.base import ProviderStatus
from receiver.providers.registry import NAMES
from receiver.service import Receiver, update_from
from receiver.store import HandlerRoute, SQLStore, Update
from receiver.store.sqlite import SQLiteConnector
from receiver.store.state import apply_update

PROVIDER_JOB_ID = "pj_1"
HANDLERS: list[dict[str, Any]] = [
    {"name": "everything", "type": "log"},
    {"name": "successes", "type": "log", "events": ["job.succeeded"]},
    {"name": "failures", "type": "log", "events": ["job.failed"]},
    {"name": "runbase-only", "type": "log", "providers": ["runbase"]},
    {"name": "video-team", "type": "log", "when": {"team": "video"}},
    {"name": "after-everything", "type": "log", "after": ["everything"]},
]
# The order of progress through a job, as the store ranks its live statuses.
RANK = {
    JobStatus.PENDING: 0,
    JobStatus.QUEUED: 0,
    JobStatus.UNKNOWN: 0,
    JobStatus.SUBMITTED: 1,
    JobStatus.RUNNING: 2,
}

progress = st.none() | st.integers(min_value=0, max_value=100)
urls = st.lists(st.sampled_from(["https://cdn.example/a.mp4", "https://cdn.example/b.mp4"]), max_size=2)
live = st.builds(
    ProviderStatus,
    provider_job_id=st.just(PROVIDER_JOB_ID),
    status=st.sampled_from([JobStatus.SUBMITTED, JobStatus.RUNNING]),
    progress=progress,
)
succeeded = st.builds(
    ProviderStatus,
    provider_job_id=st.just(PROVIDER_JOB_ID),
    status=st.just(JobStatus.SUCCEEDED),
    progress=st.just(100),
    output_urls=urls,
)
ended_badly = st.builds(
    ProviderStatus,
    provider_job_id=st.just(PROVIDER_JOB_ID),
    status=st.sampled_from([JobStatus.FAILED, JobStatus.CANCELED]),
    progress=progress,
    error=st.builds(JobError, code=st.sampled_from(["provider_failed", "canceled"]), message=st.just("x")),
)


@dataclass(frozen=True)
class Report:
    update: Update
    via: str


reports = st.builds(
    Report,
    update=st.one_of(live, succeeded, ended_badly).map(update_from),
    via=st.sampled_from(["webhook", "poll"]),
)


@dataclass
class World:
    runner: asyncio.Runner
    receiver: Receiver
    clock: VirtualClock

    def run(self, coro: Any) -> Any:
        return self.runner.run(coro)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    path: Path = tmp_path_factory.mktemp("properties") / "receiver.db"
    clock = VirtualClock()
    store = SQLStore(SQLiteConnector(str(path)))
    receiver = Receiver(Settings(secret="s" * 16), store, build_handlers(HANDLERS, clock=clock), clock=clock)
    with asyncio.Runner() as runner:
        runner.run(store.open())
        yield World(runner, receiver, clock)
        runner.run(store.close())


def _rank(status: JobStatus) -> int:
    return RANK.get(status, 3)


def _progress(job: Job) -> int:
    return -1 if job.progress is None else job.progress


def _snapshot(job: Job) -> dict[str, Any]:
    return {**job.to_json(), "event_id": job.event_id}


def _new_job(clock: VirtualClock, provider: str, metadata: dict[str, Any] | None = None) -> Job:
    return Job(
        id=new_job_id(),
        provider=provider,
        status=JobStatus.PENDING,
        request={"prompt": "p"},
        metadata=metadata or {},
        created_at=clock(),
    )


def _expected_handlers(receiver: Receiver, job: Job) -> set[str]:
    event = {"type": event_type(job.status), "job": {"provider": job.provider, "metadata": job.metadata}}
    return {spec.name for spec in receiver.specs if spec.matches(event)}


def _check_step(before: Job, after: Job, update: Update, *, ended_now: bool) -> None:
    """What one report may do to a job that had not ended before it."""
    assert _rank(after.status) >= _rank(before.status)
    assert _progress(after) >= _progress(before), "progress went backwards"
    if ended_now:
        assert after.status is update.status
        assert after.output_urls == list(update.output_urls)
        assert after.error == update.error
        assert after.event_id is not None
        if update.status is JobStatus.SUCCEEDED:
            assert after.progress == 100
        return
    assert update.status not in TERMINAL
    assert _rank(after.status) >= _rank(update.status)
    if update.progress is not None:
        assert _progress(after) >= update.progress
    assert after.event_id is None
    assert after.deliveries == []


@given(
    provider=st.sampled_from(NAMES),
    metadata=st.sampled_from([{}, {"team": "video"}, {"team": "audio"}]),
    steps=st.lists(reports, min_size=1, max_size=12),
    accepted_at=st.integers(min_value=0, max_value=12),
    held=st.sampled_from([None, JobStatus.QUEUED, JobStatus.UNKNOWN]),
)
def test_any_order_of_reports_ends_a_job_once_with_one_event_per_matching_handler(
    world: World,
    provider: str,
    metadata: dict[str, Any],
    steps: list[Report],
    accepted_at: int,
    held: JobStatus | None,
) -> None:
    """`held`: the first submit was queued, or its answer lost (`unknown`), before anything else."""
    receiver, store = world.receiver, world.receiver.store
    job = _new_job(world.clock, provider, metadata)
    world.run(store.create_job(job, world.clock() + timedelta(hours=1)))
    if held is not None:
        world.run(store.queue_job(job.id, world.clock(), 1, held))
        assert world.run(store.get_job(job.id)).status is held
    first_end = next((i for i, r in enumerate(steps) if r.update.status in TERMINAL), None)
    ended = 0
    current = world.run(store.get_job(job.id))
    for index, report in enumerate(steps):
        if index == min(accepted_at, len(steps) - 1):
            world.run(store.mark_submitted(job.id, PROVIDER_JOB_ID, world.clock(), world.clock()))
            submitted = world.run(store.get_job(job.id))
            assert _rank(submitted.status) >= _rank(current.status)
            assert submitted.progress == current.progress
            current = submitted
        world.clock.advance(1.0)
        recorded = world.run(receiver.record(job.id, report.update, report.via))
        after = world.run(store.get_job(job.id))
        assert not recorded.conflict
        if ended:
            assert not recorded.changed
            assert not recorded.terminal
            assert _snapshot(after) == _snapshot(current), "a report after the end changed the job"
        else:
            _check_step(current, after, report.update, ended_now=recorded.terminal)
            assert recorded.terminal == (index == first_end)
            if recorded.terminal:
                assert after.completed_via == report.via
        ended += recorded.terminal
        current = after
    assert ended == (first_end is not None)
    if not ended:
        assert current.status not in TERMINAL
        assert current.deliveries == []
        return
    assert current.status is steps[first_end].update.status  # type: ignore[index]
    handlers = [d.handler for d in current.deliveries]
    assert sorted(handlers) == sorted(_expected_handlers(receiver, current))
    due = world.run(store.claim_due_deliveries(world.clock(), 1000, 3600.0))
    events = [d.event for d in due if d.job_id == job.id]
    assert events, "no delivery of the final event was due"
    assert {e["id"] for e in events} == {current.event_id}
    assert {e["type"] for e in events} == {event_type(current.status)}


@settings(max_examples=50)
@given(steps=st.lists(reports, min_size=1, max_size=12))
def test_a_report_naming_another_provider_job_changes_nothing(world: World, steps: list[Report]) -> None:
    receiver, store = world.receiver, world.receiver.store
    job = _new_job(world.clock, "runbase")
    world.run(store.create_job(job, world.clock() + timedelta(hours=1)))
    world.run(store.mark_submitted(job.id, PROVIDER_JOB_ID, world.clock(), world.clock()))
    before = world.run(store.get_job(job.id))
    for report in steps:
        other = Update(
            report.update.status,
            provider_job_id="pj_other",
            progress=report.update.progress,
            output_urls=report.update.output_urls,
            error=report.update.error,
        )
        recorded = world.run(receiver.record(job.id, other, report.via))
        assert recorded.conflict
        assert not recorded.changed
    assert _snapshot(world.run(store.get_job(job.id))) == _snapshot(before)


def _routes(event: dict[str, Any]) -> list[HandlerRoute]:
    routes = [HandlerRoute("everything", ())]
    if event["type"] == "job.succeeded":
        routes.append(HandlerRoute("successes", ()))
    return routes


@given(
    start=st.sampled_from([JobStatus.PENDING, JobStatus.UNKNOWN, JobStatus.SUBMITTED]),
    steps=st.lists(reports, min_size=1, max_size=30),
)
def test_the_pure_transition_ends_once_and_never_moves_back(start: JobStatus, steps: list[Report]) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    job = Job(id="job_1", provider="runbase", status=start, request={}, created_at=now)
    calls: list[dict[str, Any]] = []

    def routes(event: dict[str, Any]) -> list[HandlerRoute]:
        calls.append(event)
        return _routes(event)

    ended = False
    for report in steps:
        before = copy.deepcopy(job)
        change = apply_update(job, report.update, report.via, now, routes)
        assert change.recorded.job is job
        if ended:
            assert not change.recorded.changed
            assert change.event is None
            assert _snapshot(job) == _snapshot(before)
            continue
        _check_step(before, job, report.update, ended_now=change.recorded.terminal)
        assert change.recorded.terminal == (report.update.status in TERMINAL)
        assert (change.event is not None) == change.recorded.terminal
        if change.event is not None:
            assert change.event["id"] == job.event_id
            assert [r.name for r in change.routes] == [d.handler for d in job.deliveries]
        ended = change.recorded.terminal
    assert len(calls) == ended


uncertain_ends = st.sampled_from(
    [
        JobError(code="timeout", message="no final status within 3600 s of submit"),
        JobError(code="submit_unknown", message="the answer to the submit was lost"),
    ]
)


@given(ours=uncertain_ends, steps=st.lists(reports, min_size=1, max_size=20))
def test_an_end_by_our_own_uncertainty_gives_way_once_to_the_providers_final_report(
    ours: JobError, steps: list[Report]
) -> None:
    """The receiver ended the job `failed` because it could not tell (timeout, lost submit answer): the
    first final report a provider brings ends it again, with a new event to every matching handler;
    nothing changes it after that, and live reports never change it."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    job = Job(id="job_1", provider="apiframe", status=JobStatus.SUBMITTED, request={}, created_at=now)
    first = apply_update(job, Update(JobStatus.FAILED, error=ours), None, now, _routes)
    assert first.recorded.terminal
    first_event = job.event_id
    corrections = 0
    for report in steps:
        before = copy.deepcopy(job)
        change = apply_update(job, report.update, report.via, now, _routes)
        if corrections or report.update.status not in TERMINAL:
            assert not change.recorded.changed
            assert _snapshot(job) == _snapshot(before)
            continue
        corrections += 1
        assert change.recorded.terminal
        assert change.corrected
        assert change.event is not None
        assert change.event["id"] == job.event_id != first_event
        assert job.status is report.update.status
        assert job.completed_via == report.via
        assert sorted(d.handler for d in job.deliveries) == sorted(r.name for r in change.routes)
    assert corrections == any(r.update.status in TERMINAL for r in steps)


@given(steps=st.lists(reports, min_size=1, max_size=20))
def test_an_end_a_provider_reported_is_never_replaced(steps: list[Report]) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    job = Job(id="job_1", provider="apiframe", status=JobStatus.SUBMITTED, request={}, created_at=now)
    failed = Update(JobStatus.FAILED, error=JobError(code="timeout", message="the provider's own words"))
    apply_update(job, failed, "webhook", now, _routes)  # a provider's report, whatever its code
    for report in steps:
        before = copy.deepcopy(job)
        assert not apply_update(job, report.update, report.via, now, _routes).recorded.changed
        assert _snapshot(job) == _snapshot(before)


class Recorder:
    """A handler that keeps every event it is given."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def handle(self, event: dict[str, Any]) -> dict[str, Any] | None:
        self.events.append(event)
        return None


class Apiframe:
    """Apiframe as the worker sees it: a poll reads the job's latest state; a submit sent again (the
    worker takes a `pending` job whose next look came due for one whose submit lost its process) finds
    the job the Idempotency-Key already made."""

    name = "apiframe"

    def __init__(self) -> None:
        self.body: dict[str, Any] = {}
        self.submits = 0

    async def submit(
        self, job_id: str, request: Any, webhook_url: str | None = None, **_: Any
    ) -> ProviderStatus:
        self.submits += 1
        return ProviderStatus(provider_job_id=PROVIDER_JOB_ID, status=JobStatus.SUBMITTED)

    async def get_status(self, provider_job_id: str, **_: Any) -> ProviderStatus:
        assert provider_job_id == PROVIDER_JOB_ID
        return apiframe.map_status(self.body)

    async def aclose(self) -> None:
        return None


def _specs() -> list[HandlerSpec]:
    return [
        HandlerSpec("everything", "recorder", Recorder()),
        HandlerSpec("successes", "recorder", Recorder(), events=("job.succeeded",)),
        HandlerSpec("failures", "recorder", Recorder(), events=("job.failed",)),
        HandlerSpec("runbase-only", "recorder", Recorder(), providers=("runbase",)),
        HandlerSpec("after-everything", "recorder", Recorder(), after=("everything",)),
    ]


apiframe_bodies = st.fixed_dictionaries(
    {
        "jobId": st.just(PROVIDER_JOB_ID),
        "status": st.sampled_from(["queued", "processing", "completed", "failed", "cancelled"]),
    },
    optional={
        "progress": st.integers(min_value=0, max_value=100),
        "result": st.sampled_from([{"videoUrl": "https://cdn.example/a.mp4"}, {"videos": []}]),
        "error": st.just("out of credits"),
    },
)


@settings(max_examples=50)  # a store and a receiver per example, worker rounds per step
@given(
    steps=st.lists(st.tuples(st.sampled_from(["webhook", "poll"]), apiframe_bodies), min_size=1, max_size=10),
    accepted_at=st.integers(min_value=0, max_value=10),
)
def test_reports_by_either_road_deliver_one_event_to_each_matching_handler(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, dict[str, Any]]], accepted_at: int
) -> None:
    """Webhooks through accept_webhook with the job's token, polls through a worker round: a webhook
    that cannot be acted on (succeeded without a URL) asks for a poll, as the route does."""
    path = tmp_path_factory.mktemp("roads") / "receiver.db"
    provider = Apiframe()
    clock = VirtualClock()
    specs = _specs()
    receiver = Receiver(
        Settings(secret="s" * 16),
        SQLStore(SQLiteConnector(str(path))),
        specs,
        clients={"apiframe": provider},
        clock=clock,
    )
    with asyncio.Runner() as runner:
        runner.run(receiver.open())
        try:
            job = _new_job(clock, "apiframe")
            runner.run(receiver.store.create_job(job, clock() + timedelta(hours=1)))
            token = receiver.signer.token(job.id, "apiframe")
            current = runner.run(receiver.store.get_job(job.id))
            ended: Job | None = None
            for index, (road, body) in enumerate(steps):
                if index == min(accepted_at, len(steps) - 1):
                    # Accepted with the first poll far away: polls come only when a step asks.
                    far = clock() + timedelta(hours=2)
                    runner.run(receiver.store.mark_submitted(job.id, PROVIDER_JOB_ID, clock(), far))
                    # Acceptance is no report: a job an early webhook ended gains its submit time.
                    current = runner.run(receiver.store.get_job(job.id))
                    ended = current if ended is not None else None
                clock.advance(1.0)
                provider.body = body
                if road == "webhook":
                    raw = json.dumps(body).encode()

                    async def read(raw: bytes = raw) -> bytes:
                        return raw

                    runner.run(receiver.accept_webhook("apiframe", token, {}, read))
                elif current.provider_job_id is not None:  # the worker polls only a job the provider took
                    runner.run(receiver.store.poll_soon(job.id, clock()))
                runner.run(receiver.tick())
                after = runner.run(receiver.store.get_job(job.id))
                assert _progress(after) >= _progress(current), "progress went backwards"
                assert _rank(after.status) >= _rank(current.status)
                if ended is not None:
                    assert after.to_json(deliveries=False) == ended.to_json(deliveries=False)
                    assert after.event_id == ended.event_id
                elif after.status in TERMINAL:
                    ended = after
                current = after
            runner.run(receiver.tick())
        finally:
            runner.run(receiver.close())
    for spec in specs:
        events = spec.handler.events  # type: ignore[attr-defined]
        if ended is None:
            assert events == []
            continue
        matches = spec.matches({"type": event_type(ended.status), "job": ended.to_json(deliveries=False)})
        assert [e["id"] for e in events] == ([ended.event_id] if matches else []), spec.name


def test_an_unusable_webhook_during_the_submit_does_not_make_the_worker_resubmit(
    tmp_path: Path,
) -> None:
    """Apiframe may call the webhook before its answer to the submit arrives. A report that must be
    confirmed by a poll (completed without a URL) then asks for a poll soon; on a job that has no
    provider id yet, that brings its submit lease to now, and the next worker round takes the job for
    one whose submitting process died and sends the submit again while the first is still in flight."""
    provider = Apiframe()
    clock = VirtualClock()
    settings_ = Settings(secret="s" * 16)
    store = SQLStore(SQLiteConnector(str(tmp_path / "receiver.db")))
    receiver = Receiver(settings_, store, _specs(), clients={"apiframe": provider}, clock=clock)
    body = json.dumps({"jobId": PROVIDER_JOB_ID, "status": "completed"}).encode()

    async def read() -> bytes:
        return body

    async def scenario() -> None:
        await receiver.open()
        try:
            job = _new_job(clock, "apiframe")
            lease = clock() + timedelta(seconds=settings_.submit_lease)
            await store.create_job(job, clock() + timedelta(hours=1), lease)  # as Receiver.submit does
            token = receiver.signer.token(job.id, "apiframe")
            assert await receiver.accept_webhook("apiframe", token, {}, read) == {
                "ok": True,
                "confirm": "poll",
            }
            await receiver.tick()
        finally:
            await receiver.close()

    asyncio.run(scenario())
    assert provider.submits == 0
