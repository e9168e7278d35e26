"""The hand-off: a job this process ends is delivered by its worker at once, without a round of the loop:
the record inserts its deliveries leased to this process, so neither the loop nor another worker runs
them again, and no claim or wake-up stands between the commit and the handler's call."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio.to_thread
import pytest

from handlers import HandlerSpec
from receiver.clock import VirtualClock
from receiver.config import Settings
from receiver.events import Job, JobStatus
from receiver.service import Receiver
from receiver.store import Update, open_store
from receiver.worker import CONCURRENCY
from tests.support.waiting import wait_until_async

pytestmark = pytest.mark.anyio


class Broken:
    """A handler whose first call fails."""

    def __init__(self) -> None:
        self.calls = 0

    async def handle(self, event: dict[str, Any]) -> None:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("first attempt fails")


class Gate:
    """A handler that counts its calls per job, and holds the calls of the jobs in `held` until opened."""

    def __init__(self, held: frozenset[str] = frozenset()) -> None:
        self.calls: Counter[str] = Counter()
        self.held = held
        self.open = asyncio.Event()

    async def handle(self, event: dict[str, Any]) -> None:
        job_id = event["job"]["id"]
        self.calls[job_id] += 1
        if job_id in self.held:
            await self.open.wait()


@pytest.fixture
async def receiver(store_url: str) -> AsyncIterator[Receiver]:
    """A receiver on a clock that never moves: only a wake-up or a hand-off can deliver anything."""
    clock = VirtualClock(datetime(2026, 1, 1, tzinfo=UTC))
    settings = replace(Settings(), database_url=store_url, handlers=[{"name": "gate", "type": "log"}])
    receiver = Receiver.from_settings(settings, clock=clock)
    await receiver.open()
    yield receiver
    await receiver.close()


def use(receiver: Receiver, handler: Gate) -> None:
    spec = replace(receiver.specs[0], handler=handler)
    receiver.specs, receiver.by_name = [spec], {spec.name: spec}


async def end(receiver: Receiver, job_id: str) -> None:
    clock = receiver.clock
    job = Job(
        id=job_id, provider="runbase", status=JobStatus.PENDING, request={"prompt": "x"}, created_at=clock()
    )
    await receiver.store.create_job(job, clock() + timedelta(hours=1))
    await receiver.record(job_id, Update(JobStatus.SUCCEEDED, provider_job_id=f"rb_{job_id}"), via="poll")


async def started(receiver: Receiver, stop: asyncio.Event) -> asyncio.Task[None]:
    """The worker loop, once its first round is over and it sleeps."""
    task = asyncio.create_task(receiver.worker.run(stop))
    clock = receiver.clock
    assert isinstance(clock, VirtualClock)
    await anyio.to_thread.run_sync(clock.wait_for_sleepers, 1)
    return task


async def test_a_job_ended_while_the_loop_is_busy_is_delivered_without_it(receiver: Receiver) -> None:
    gate = Gate(held=frozenset({"job_busy"}))
    use(receiver, gate)
    await end(receiver, "job_busy")  # before the loop runs: its first round delivers it, and waits
    stop = asyncio.Event()
    loop = asyncio.create_task(receiver.worker.run(stop))
    try:
        await wait_until_async(lambda: gate.calls["job_busy"] == 1)
        await end(receiver, "job_quick")
        await wait_until_async(lambda: gate.calls["job_quick"] == 1)
        quick = await receiver.get_job("job_quick")
        busy = await receiver.get_job("job_busy")
    finally:
        gate.open.set()
        stop.set()
        await loop

    assert quick.deliveries[0].status == "delivered"
    assert busy.deliveries[0].status == "pending"  # the loop's round was still inside its handler
    assert (await receiver.get_job("job_busy")).deliveries[0].status == "delivered"


async def test_many_jobs_ended_at_once_are_each_delivered_once(receiver: Receiver) -> None:
    gate = Gate()
    use(receiver, gate)
    stop = asyncio.Event()
    loop = await started(receiver, stop)
    job_ids = [f"job_{n}" for n in range(3 * CONCURRENCY)]  # more than are handed off at once
    try:
        await asyncio.gather(*(end(receiver, job_id) for job_id in job_ids))
        await wait_until_async(lambda: sum(gate.calls.values()) >= len(job_ids))
    finally:
        stop.set()
        await loop
    jobs = [await receiver.get_job(job_id) for job_id in job_ids]

    assert gate.calls == Counter(job_ids)
    assert all(job.deliveries[0].status == "delivered" for job in jobs)
    assert all(job.deliveries[0].attempts == 1 for job in jobs)
    assert receiver.clock.monotonic() == 0  # no sleep ran out: nothing waited for the loop's next round


async def test_a_handed_off_delivery_that_fails_is_retried_when_due(receiver: Receiver) -> None:
    failing = HandlerSpec("gate", "log", Broken(), retry_base=0.5, retry_max=0.5)
    receiver.specs, receiver.by_name = [failing], {"gate": failing}
    clock = receiver.clock
    assert isinstance(clock, VirtualClock)
    stop = asyncio.Event()
    loop = await started(receiver, stop)
    try:
        await end(receiver, "job_1")
        # The loop, asleep for its safety net, plans its sleep again: until the retry is due.
        await wait_until_async(lambda: clock.sleepers == [0.5])
        clock.advance_to(0.5)
        await wait_until_async(lambda: failing.handler.calls == 2)  # type: ignore[attr-defined]
    finally:
        stop.set()
        await loop
    job = await receiver.get_job("job_1")

    assert job.deliveries[0].status == "delivered"
    assert job.deliveries[0].attempts == 2


async def test_a_job_this_process_ends_reaches_its_handler_without_a_claim_or_a_wake_up(
    receiver: Receiver, store_url: str
) -> None:
    gate = Gate(held=frozenset({"job_1"}))
    use(receiver, gate)
    stop = asyncio.Event()
    loop = await started(receiver, stop)
    store, clock = receiver.store, receiver.clock
    assert isinstance(clock, VirtualClock)
    # On PostgreSQL the loop looks once more when its listen connection is up: then it sleeps again.
    notices = store.connector.notifies  # type: ignore[attr-defined]
    await wait_until_async(
        lambda: (store.listening or not notices) and not receiver.worker.wake_pending and clock.sleepers
    )
    calls: Counter[str] = Counter()
    for name in ("claim_due_deliveries", "next_due"):
        method = getattr(store, name)

        async def counted(*args: Any, _method: Any = method, _name: str = name, **kwargs: Any) -> Any:
            calls[_name] += 1
            return await _method(*args, **kwargs)

        setattr(store, name, counted)
    other = open_store(store_url)  # another process's worker
    await other.open()
    try:
        await end(receiver, "job_1")
        await wait_until_async(lambda: gate.calls["job_1"] == 1)
        taken = await other.claim_due_deliveries(receiver.clock(), CONCURRENCY, 30)
        woken = receiver.worker.wake_pending
        gate.open.set()
        await wait_until_async(lambda: not receiver.worker._handed)
    finally:
        gate.open.set()
        stop.set()
        await loop
        await other.close()

    assert taken == []  # leased by the record, to this process
    assert not woken
    assert calls == Counter()  # the loop slept through it; the hand-off claimed nothing
    assert (await receiver.get_job("job_1")).deliveries[0].status == "delivered"


async def test_deliveries_a_record_leased_to_a_worker_that_stopped_go_out_when_the_lease_runs_out(
    receiver: Receiver,
) -> None:
    gate = Gate()
    use(receiver, gate)
    clock = receiver.clock
    assert isinstance(clock, VirtualClock)
    job = Job(
        id="job_1", provider="runbase", status=JobStatus.PENDING, request={"prompt": "x"}, created_at=clock()
    )
    await receiver.store.create_job(job, clock() + timedelta(hours=1))
    done = Update(JobStatus.SUCCEEDED, provider_job_id="rb_1")
    lease = receiver.worker.lease()
    # As if the process that recorded it was killed before its hand-off ran.
    recorded = await receiver.store.record("job_1", done, "poll", clock(), receiver.routes, clock() + lease)
    assert [d.handler for d in recorded.leased] == ["gate"]
    stop = asyncio.Event()
    loop = await started(receiver, stop)
    end_of_lease = lease.total_seconds()
    try:
        clock.advance_to(end_of_lease - 0.5)  # past the loop's safety net: it looks, and sleeps again
        await wait_until_async(lambda: clock.sleepers == [end_of_lease])  # until the lease runs out
        assert gate.calls["job_1"] == 0
        clock.advance_to(end_of_lease)
        await wait_until_async(lambda: gate.calls["job_1"] == 1)
    finally:
        stop.set()
        await loop

    assert (await receiver.get_job("job_1")).deliveries[0].status == "delivered"
    assert gate.calls["job_1"] == 1


class Named:
    """A handler that notes its name in `order` when called, and waits for `open` first if given."""

    def __init__(self, name: str, order: list[str], open: asyncio.Event | None = None) -> None:
        self.name, self.order, self.open = name, order, open

    async def handle(self, event: dict[str, Any]) -> dict[str, Any]:
        self.order.append(self.name)
        if self.open is not None:
            await self.open.wait()
        return {"by": self.name}


def storage_then_db(receiver: Receiver, order: list[str], held: asyncio.Event | None = None) -> None:
    """Handlers `storage`, then `db` after it (`held`: storage waits for it before it ends)."""
    first = replace(receiver.specs[0], name="storage", handler=Named("storage", order, held))
    then = replace(receiver.specs[0], name="db", handler=Named("db", order), after=("storage",))
    receiver.specs, receiver.by_name = [first, then], {"storage": first, "db": then}
    receiver.worker._ordered = True  # as a Worker built with these handlers would be


async def test_a_handed_off_job_goes_on_to_the_delivery_that_waits_after_its_first(
    receiver: Receiver,
) -> None:
    order: list[str] = []
    storage_then_db(receiver, order)
    stop = asyncio.Event()
    loop = await started(receiver, stop)
    try:
        await end(receiver, "job_1")
        await wait_until_async(lambda: len(order) == 2)
    finally:
        stop.set()
        await loop
    job = await receiver.get_job("job_1")

    assert order == ["storage", "db"]
    assert {d.handler: str(d.status) for d in job.deliveries} == {"storage": "delivered", "db": "delivered"}
    assert receiver.clock.monotonic() == 0  # no sleep ran out: nothing waited for the loop's next round


async def test_another_process_sleeps_while_this_one_runs_the_delivery_another_waits_after(
    receiver: Receiver,
) -> None:
    """Its worker cannot claim `db` while `storage` is owed: it used to find `db` due and look again at
    once, for as long as the upload ran (hundreds of rounds a second)."""
    order: list[str] = []
    held = asyncio.Event()
    storage_then_db(receiver, order, held)
    clock = receiver.clock
    assert isinstance(clock, VirtualClock)
    other = Receiver.from_settings(receiver.settings, clock=clock)
    await other.open()
    storage_then_db(other, [])
    rounds: Counter[str] = Counter()
    next_due = other.store.next_due

    async def counted() -> Any:
        rounds["other"] += 1
        return await next_due()

    other.store.next_due = counted  # type: ignore[method-assign]
    stop = asyncio.Event()
    loops = [await started(receiver, stop), asyncio.create_task(other.worker.run(stop))]
    try:
        await end(receiver, "job_1")
        await wait_until_async(lambda: order == ["storage"])
        # This loop waits for its hand-off; the other one sleeps on the clock instead of spinning on `db`.
        await wait_until_async(lambda: len(clock.sleepers) == 1 and not other.worker.wake_pending)
        asleep = rounds["other"]
        held.set()
        await wait_until_async(lambda: order == ["storage", "db"])
        await wait_until_async(lambda: len(clock.sleepers) == 2)
    finally:
        held.set()
        stop.set()
        await asyncio.gather(*loops)
        await other.close()
    job = await receiver.get_job("job_1")

    assert {d.handler: str(d.status) for d in job.deliveries} == {"storage": "delivered", "db": "delivered"}
    assert rounds["other"] == asleep  # it slept through: this process went on to `db` itself
