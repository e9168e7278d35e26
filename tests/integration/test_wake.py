"""Waking across processes on PostgreSQL: a webhook recorded by one receiver is delivered at once by the
worker of another, whose clock never moves (so only a notice can wake it); a worker whose listen
connection is killed goes on and listens again; and a worker sleeps exactly until the next stored due
time, within its safety net."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import anyio.to_thread
import httpx
import psycopg
import pytest
from structlog.testing import capture_logs

from receiver.app import create_app
from receiver.background import BackgroundServer
from receiver.clock import VirtualClock
from receiver.config import Settings
from receiver.events import Job, JobStatus
from receiver.service import Receiver
from receiver.store import Update
from receiver.store.postgres import PostgresConnector
from receiver.worker import MAX_IDLE, MAX_IDLE_LISTENING
from tests.support.inbox import Inbox
from tests.support.pg import PG_URL, fresh_schema
from tests.support.stack import Stack, apiframe_body, apiframe_signature, receiver_stack, verify_forward
from tests.support.waiting import wait_until, wait_until_async

PASSWORD = "s3cr@t-pw"
URL_WITH_PASSWORD = "postgresql://receiver:s3cr%40t-pw@127.0.0.1:1/jobs"
QUIET = {"apiframe": {"webhook": "drop", "delay": 600}, "expected_seconds": 600}


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_schema() as url:
        yield url


@contextmanager
def other_process(web: Stack, name: str) -> Iterator[tuple[Receiver, VirtualClock]]:
    """A second receiver with its worker on the web stack's database, through a store (and pool) of its
    own, on a virtual clock that nothing advances; its connections are named `name` in pg_stat_activity."""
    settings = web.receiver.settings
    clock = VirtualClock(web.clock())
    url = f"{settings.database_url}&application_name={name}"
    receiver = Receiver.from_settings(replace(settings, database_url=url), clock=clock)
    with BackgroundServer(create_app(receiver)):
        clock.wait_for_sleepers(1)  # its first round is done: from here on only a wake-up runs another
        wait_until(lambda: receiver.store.listening)
        yield receiver, clock


def complete_by_webhook(stack: Stack) -> str:
    """Submit an Apiframe job through `stack` (no worker there) and post its completion webhook to it."""
    job = stack.submit("apiframe")
    body = apiframe_body(job["provider_job_id"])
    answer = httpx.post(
        stack.hook_url(job["id"]), content=body, headers={"X-Webhook-Signature": apiframe_signature(body)}
    )
    assert answer.status_code == 200, answer.text
    return str(job["id"])


def listener_pid(name: str) -> int | None:
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND query LIKE %s",
            (name, "%LISTEN%"),
        ).fetchall()
    assert len(rows) <= 1, rows
    return int(rows[0][0]) if rows else None


@pytest.mark.postgres
def test_a_webhook_recorded_by_one_process_is_delivered_by_another_at_once(
    tmp_path: Path, sink: Inbox, pg_url: str
) -> None:
    with (
        receiver_stack(tmp_path, sink.url, database_url=pg_url, run_worker=False, **QUIET) as web,
        other_process(web, f"wake_{uuid.uuid4().hex[:8]}") as (_, worker_clock),
    ):
        job_id = complete_by_webhook(web)
        posts = sink.wait_for(1)
        done = wait_until(lambda: web.settled(job_id))

    assert verify_forward(posts[0].headers, posts[0].body)["job"]["id"] == job_id
    assert done["completed_via"] == "webhook"
    assert worker_clock.monotonic() == 0  # no sleep of the worker ran out: a notice woke it
    assert len(sink.posts) == 1


@pytest.mark.postgres
def test_a_worker_whose_listen_connection_is_killed_goes_on_and_listens_again(
    tmp_path: Path, sink: Inbox, pg_url: str
) -> None:
    name = f"wake_{uuid.uuid4().hex[:8]}"
    with (
        receiver_stack(tmp_path, sink.url, database_url=pg_url, run_worker=False, **QUIET) as web,
        other_process(web, name) as (worker, worker_clock),
    ):
        killed = wait_until(lambda: listener_pid(name))
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            assert conn.execute("SELECT pg_terminate_backend(%s)", (killed,)).fetchone() == (True,)
        relistening = wait_until(lambda: (pid := listener_pid(name)) not in (None, killed) and pid)
        wait_until(lambda: worker.store.listening)
        job_id = complete_by_webhook(web)
        sink.wait_for(1)
        done = wait_until(lambda: web.settled(job_id))

    assert relistening != killed
    assert done["deliveries"][0]["attempts"] == 1
    assert worker_clock.monotonic() == 0
    assert len(sink.posts) == 1


def sleeps_until(due_in: float, bound: float) -> list[float]:
    """The deadlines of the worker's sleeps: the safety net again and again, then the due time itself."""
    return [bound * n for n in range(1, int(due_in // bound) + 1) if bound * n < due_in] + [due_in]


@pytest.mark.anyio
@pytest.mark.parametrize("due_in", [0.75, 3.25, 12.5])
async def test_the_worker_sleeps_until_the_next_stored_due_time_within_its_safety_net(
    store_url: str, due_in: float
) -> None:
    clock = VirtualClock(datetime(2026, 1, 1, tzinfo=UTC))
    settings = replace(Settings(), database_url=store_url, handlers=[{"name": "log", "type": "log"}])
    receiver = Receiver.from_settings(settings, clock=clock)
    store = receiver.store
    await receiver.open()
    job = Job(
        id="job_1", provider="runbase", status=JobStatus.PENDING, request={"prompt": "x"}, created_at=clock()
    )
    await store.create_job(job, clock() + timedelta(hours=1))
    await receiver.record(job.id, Update(JobStatus.SUCCEEDED, provider_job_id="rb_1"), via="poll")
    assert len(await store.claim_due_deliveries(clock(), 10, 60)) == 1
    due = clock() + timedelta(seconds=due_in)
    await store.finish_delivery(job.id, "log", delivered=False, error="try later", retry_at=due)
    stop = asyncio.Event()
    worker = asyncio.create_task(receiver.worker.run(stop))
    try:
        if store_url.startswith("postgresql"):  # listening, and the round that going live started is done
            await wait_until_async(lambda: store.listening and not receiver.worker.wake_pending)
        bound = MAX_IDLE_LISTENING if store.listening else MAX_IDLE
        deadlines = []
        while True:
            (deadline,) = await anyio.to_thread.run_sync(clock.wait_for_sleepers, 1)  # its round is done
            job = await receiver.get_job(job.id)
            if job.deliveries[0].status == "delivered":
                break
            deadlines.append(deadline)
            clock.advance_to(deadline)
    finally:
        stop.set()
        await worker
        await receiver.close()

    assert deadlines == sleeps_until(due_in, bound)
    assert clock() == due
    assert job.deliveries[0].attempts == 2


@pytest.mark.anyio
async def test_an_unreachable_listen_server_is_logged_once_without_password_and_retried_with_backoff() -> (
    None
):
    clock = VirtualClock()
    connector = PostgresConnector.from_url(URL_WITH_PASSWORD)
    states: list[bool] = []
    with capture_logs() as logs:
        listener = asyncio.create_task(connector.listen("LISTEN x", print, states.append, clock.sleep))
        backoffs = []
        try:
            for _ in range(4):  # the first retry comes at once, the next ones after doubling waits
                (deadline,) = await anyio.to_thread.run_sync(clock.wait_for_sleepers, 1)
                backoffs.append(deadline - clock.monotonic())
                clock.advance_to(deadline)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    assert [entry["event"] for entry in logs] == ["store.listen_lost"]
    assert PASSWORD not in str(logs)
    assert "s3cr%40t" not in str(logs)
    assert states == []  # never listening, so never "lost" either
    for n, backoff in enumerate(backoffs):  # 0.5 s doubling, up to 25 % jitter
        assert 0.5 * 2**n <= backoff <= 0.625 * 2**n


@pytest.mark.anyio
async def test_wake_ups_that_keep_coming_never_hold_back_the_full_round(tmp_path: Path) -> None:
    # A steady stream of completions wakes the worker during every round: each wake-up only dispatches,
    # but once the full round's time has come, the next one is a full round (polls, deadlines).
    clock = VirtualClock(datetime(2026, 1, 1, tzinfo=UTC))
    settings = replace(Settings(), database_url=f"sqlite:///{tmp_path}/r.db", handlers=[])
    receiver = Receiver.from_settings(settings, clock=clock)
    worker = receiver.worker
    rounds: list[str] = []
    dispatch, tick = worker.dispatch, worker.tick

    async def dispatched() -> dict[str, int]:
        rounds.append("dispatch")
        if rounds.count("dispatch") == 3:
            clock.advance(MAX_IDLE + 1)  # the full round's time comes while the wake-ups go on
        if len(rounds) < 12:
            worker.wake()  # the next completion, already recorded as this round ends
        return await dispatch()

    async def ticked(*, paced: bool = False) -> dict[str, int]:
        rounds.append("tick")
        if len(rounds) < 12:
            worker.wake()
        return await tick(paced=paced)

    worker.dispatch, worker.tick = dispatched, ticked  # type: ignore[method-assign]
    await receiver.open()
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await wait_until_async(lambda: len(rounds) >= 12)  # the last wake-up's round ran
    finally:
        stop.set()
        await task
        await receiver.close()

    assert rounds[:5] == ["tick", "dispatch", "dispatch", "dispatch", "tick"]
    assert rounds[5:] == ["dispatch"] * (len(rounds) - 5)
