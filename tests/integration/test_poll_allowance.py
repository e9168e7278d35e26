"""The worker's poll allowance and batches (receiver/planner.py): what a job ended by a poll did not use
of its looks passes to the jobs still in flight with it, which spend it on the budget's idle slots; a
lone job has none and keeps its own plan. Jobs submitted together are a batch: while one of them may
be finishing, every slot goes to them, the last one's too. The real worker, store, budget and Runbase
emulator, on a virtual clock that the test moves one pace step at a time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver import planner
from receiver.clock import VirtualClock
from receiver.completion import Lognormal
from receiver.config import Settings
from receiver.emulators.runbase import RunbaseEmulator
from receiver.generation import KlingRequest
from receiver.planner import ALLOWANCE, BATCH_GAP
from receiver.providers.ratelimit import StoreBudget
from receiver.providers.runbase import RunbaseClient
from receiver.service import Receiver
from receiver.store import open_store
from receiver.worker import MAX_IDLE

pytestmark = pytest.mark.anyio

KEY = "rb_allowance_key"
STEP = 0.5  # the pace: 10 s / 20 requests
SPAN = 10.0


@asynccontextmanager
async def runbase_receiver(folder: Path) -> AsyncIterator[tuple[VirtualClock, RunbaseEmulator, Receiver]]:
    clock = VirtualClock(datetime(2026, 1, 1, tzinfo=UTC))
    emulator = RunbaseEmulator(api_key=KEY, rate_limit=10**9, balance=1e9, clock=clock, delay=150.0)
    settings = Settings(runbase_api_key=KEY, database_url=f"sqlite:///{folder / 'allowance.db'}")
    store = open_store(settings.database_url)
    budget = StoreBudget(store, settings.runbase_rate_limit, settings.runbase_rate_window, clock=clock)
    transport = httpx.ASGITransport(app=emulator.app)
    client = RunbaseClient(KEY, "http://runbase.test", budget=budget, transport=transport, clock=clock)
    receiver = Receiver(settings, store, [], clients={"runbase": client}, budget=budget, clock=clock)
    await receiver.open()
    try:
        yield clock, emulator, receiver
    finally:
        await receiver.close()


async def submit(emulator: RunbaseEmulator, receiver: Receiver, end: float) -> str:
    job = await receiver.submit("runbase", KlingRequest(prompt="a fox"))
    emulator.runs[job.provider_job_id or ""].delay = end
    return job.id


async def looks_at_the_last(
    folder: Path, jobs_at: list[tuple[float, float]], start: float | None
) -> tuple[int, float, int]:
    """Jobs submitted at the first of each pair (seconds), ending the second s after, the worker's paced
    rounds every STEP s. From `start` (None: when the first job is seen to end), for SPAN s: the looks
    at the last job; and `start`, and how many looks the first job took."""
    async with runbase_receiver(folder) as (clock, emulator, receiver):
        jobs = []
        for at, end in jobs_at:
            while clock.monotonic() < at:
                clock.advance(STEP)
                await receiver.worker.tick(paced=True)
            jobs.append(await submit(emulator, receiver, end))
        before = 0
        while start is None or clock.monotonic() < start + SPAN:
            clock.advance(STEP)
            await receiver.worker.tick(paced=True)
            if start is None and (await receiver.get_job(jobs[0])).completed_at is not None:
                start = clock.monotonic()
            if start is not None and clock.monotonic() <= start:
                before = (await receiver.get_job(jobs[-1])).poll_count
        last, first = await receiver.get_job(jobs[-1]), await receiver.get_job(jobs[0])
        assert last.completed_at is None
        return last.poll_count - before, start, first.poll_count


async def test_a_job_in_flight_gets_the_slots_one_ended_before_did_not_need(tmp_path: Path) -> None:
    """Two jobs submitted 20 s apart (no batch), the first ends at 110 s: the other (ends at 250 s) is
    looked at every pace step while the first one's unused looks last; the same job alone, over the
    same seconds, waits for its own plan (a look every several seconds there)."""
    (tmp_path / "pair").mkdir()
    (tmp_path / "lone").mkdir()
    apart = BATCH_GAP + 10.0
    pair = [(0.0, 110.0), (apart, 250.0)]
    inherited, start, first_looks = await looks_at_the_last(tmp_path / "pair", pair, None)
    alone, _, _ = await looks_at_the_last(tmp_path / "lone", pair[1:], start)
    spare = ALLOWANCE - first_looks
    assert spare > SPAN / STEP / 2
    assert inherited >= min(spare, SPAN / STEP) - 2  # a slot or two the budget's window held back
    assert alone <= 3


async def test_the_last_job_of_a_batch_gets_every_slot_with_no_allowance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same two jobs submitted together, and no allowance at all: once the first ended, the last is
    still looked at every pace step (its batch-mate is gone, the worker remembers the batch)."""
    monkeypatch.setattr(planner, "ALLOWANCE", 0.0)
    looks, _, _ = await looks_at_the_last(tmp_path, [(0.0, 110.0), (0.0, 250.0)], None)
    assert looks >= SPAN / STEP - 2  # a slot or two the budget's window held back


async def looks_between(folder: Path, second_at: float, ages: tuple[float, float]) -> int:
    """Two jobs that end at 400 s, the second submitted `second_at` s after the first: their looks while
    the first is between `ages`."""
    async with runbase_receiver(folder) as (clock, emulator, receiver):
        jobs = [await submit(emulator, receiver, 400.0)]
        before = 0
        while clock.monotonic() < ages[1]:
            clock.advance(STEP)
            await receiver.worker.tick(paced=True)
            if len(jobs) == 1 and clock.monotonic() >= second_at:
                jobs.append(await submit(emulator, receiver, 400.0))
            if clock.monotonic() <= ages[0]:
                before = sum([(await receiver.get_job(job_id)).poll_count for job_id in jobs])
        return sum([(await receiver.get_job(job_id)).poll_count for job_id in jobs]) - before


async def test_a_batch_gets_every_slot_from_where_its_videos_may_be_ready(tmp_path: Path) -> None:
    """Two jobs submitted together, looked at from the model's p0.1 (69 s for a 150 s median): every pace
    step, though the chance that either finished is well under the price; before it, none. The same two
    submitted 20 s apart (no batch) are looked at by the price, a few times in those seconds."""
    for name in ("batch", "apart", "early"):
        (tmp_path / name).mkdir()
    start = Lognormal.prior(150.0).quantile(planner.FINISHING[0]) + STEP
    batch = await looks_between(tmp_path / "batch", 0.0, (start, start + SPAN))
    apart = await looks_between(tmp_path / "apart", BATCH_GAP + 10.0, (start, start + SPAN))
    early = await looks_between(tmp_path / "early", 0.0, (start - SPAN - 2 * STEP, start - 2 * STEP))
    assert batch >= SPAN / STEP - 2
    assert apart <= 3
    assert early == 0


async def test_an_allowance_never_keeps_the_loop_awake_for_a_job_with_nothing_to_find(tmp_path: Path) -> None:
    """A job ends, leaving most of its allowance; one submitted just after has no chance of having
    finished yet: the loop sleeps (its safety net) instead of coming back at once, again and again."""
    async with runbase_receiver(tmp_path) as (clock, emulator, receiver):
        first = await submit(emulator, receiver, 110.0)
        while (await receiver.get_job(first)).completed_at is None:
            clock.advance(STEP)
            await receiver.worker.tick(paced=True)
        await submit(emulator, receiver, 250.0)
        clock.advance(STEP)
        await receiver.worker.tick(paced=True)
        assert await receiver.worker._idle() == MAX_IDLE


async def test_a_paced_round_leases_only_the_jobs_it_looks_at(tmp_path: Path) -> None:
    """Ten jobs in flight: each paced round reads them all to pool their chances, and leases (writes)
    only the one it looks at, not every job in flight; a lease it took is a look, or is released at once
    when the budget refuses the request."""
    async with runbase_receiver(tmp_path) as (clock, emulator, receiver):
        jobs = [await submit(emulator, receiver, 400.0) for _ in range(10)]
        store = receiver.store
        leased: list[list[str]] = []
        released: list[str] = []

        def counted(claim: Any) -> Any:
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                got = await claim(*args, **kwargs)
                leased[-1] += [job.id for job in got]
                return got

            return wrapper

        store.claim_due_polls = counted(store.claim_due_polls)  # type: ignore[method-assign]
        store.claim_chosen_polls = counted(store.claim_chosen_polls)  # type: ignore[method-assign]
        release = store.release_polls

        async def released_polls(job_ids: list[str]) -> None:
            released.extend(job_ids)
            await release(job_ids)

        store.release_polls = released_polls  # type: ignore[method-assign]
        while clock.monotonic() < 300.0:
            clock.advance(STEP)
            leased.append([])
            await receiver.worker.tick(paced=True)
        looks = sum([(await receiver.get_job(job_id)).poll_count for job_id in jobs])
        assert looks > 100  # the pool spends the budget on them as their end nears
        assert max(len(round_) for round_ in leased) == 1
        assert sum(len(round_) for round_ in leased) == looks + len(released)
