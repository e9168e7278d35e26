"""StoreBudget on both stores: two budgets over two stores opened on one database stand for two processes.
Time is a VirtualClock; a driver advances it to the next sleeper once every task waits on it."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable
from datetime import datetime
from typing import Any, TypeVar

import anyio
import pytest

from receiver.clock import VirtualClock
from receiver.providers.ratelimit import BudgetBusy, StoreBudget
from receiver.store import Admission, SQLStore, open_store

T = TypeVar("T")

KEY = "runbase:0123456789abcdef01234567"
WINDOW = 10.0
TIMEOUT = 30.0
RESOLUTION = 1e-5  # the stores keep microseconds; the test's own times are floats


class Watched:
    """A store whose budget calls in progress are counted: the driver knows when no task is in one."""

    def __init__(self, store: SQLStore) -> None:
        self.store = store
        self.active = 0

    async def _call(self, call: Awaitable[T]) -> T:
        self.active += 1
        try:
            return await call
        finally:
            self.active -= 1

    async def budget_admit(
        self, key: str, limit: int, window: float, now: datetime, stale_after: float
    ) -> Admission:
        return await self._call(self.store.budget_admit(key, limit, window, now, stale_after))

    async def budget_release(self, key: str, request_id: str, started_at: datetime, now: datetime) -> None:
        await self._call(self.store.budget_release(key, request_id, started_at, now))

    async def budget_penalize(self, key: str, until: datetime) -> None:
        await self._call(self.store.budget_penalize(key, until))


class Processes:
    """Two stores on one database, each with its StoreBudget, on one virtual clock."""

    def __init__(self, stores: list[Watched], clock: VirtualClock) -> None:
        self.stores = stores
        self.clock = clock

    def budget(self, n: int, limit: int, **options: Any) -> StoreBudget:
        return StoreBudget(
            self.stores[n], limit, WINDOW, margin=0.0, request_timeout=TIMEOUT, clock=self.clock, **options
        )

    async def settled(self) -> None:
        """Until no budget call is in progress and every task has had its turns: all wait on the clock
        or on each other."""
        quiet = 0
        with anyio.fail_after(20):
            while quiet < 10:
                busy = any(store.active for store in self.stores)
                quiet = 0 if busy else quiet + 1
                await asyncio.sleep(0.001 if busy else 0)

    async def run(self, *coros: Awaitable[T]) -> list[T]:
        """Run the coroutines to their end, moving the clock to the next sleeper whenever all wait."""
        tasks = [asyncio.ensure_future(c) for c in coros]
        while True:
            await self.settled()
            if all(task.done() for task in tasks):
                return [task.result() for task in tasks]
            deadlines = self.clock.sleepers
            assert deadlines, "every task waits, and none on the clock"
            self.clock.advance_to(deadlines[0])

    async def rows(self) -> int:
        query = "SELECT COUNT(*) AS n FROM receiver_budget_requests"
        (row,) = await self.stores[0].store.connector.run(lambda tx: tx.fetch(query, {}), write=False)
        return int(row["n"])


@pytest.fixture
async def processes(store_url: str) -> AsyncIterator[Processes]:
    stores = [open_store(store_url) for _ in range(2)]
    for store in stores:
        await store.open()
    try:
        assert all(isinstance(store, SQLStore) for store in stores)
        yield Processes([Watched(store) for store in stores if isinstance(store, SQLStore)], VirtualClock())
    finally:
        for store in stores:
            await store.close()


def _most_counting(requests: list[tuple[float, float]]) -> int:
    """The most requests counting at once: from admission until answer plus the window."""
    return max(
        sum(1 for start, end in requests if start <= t + RESOLUTION and t < end + WINDOW - RESOLUTION)
        for t, _ in requests
    )


async def _request(
    budget: StoreBudget, clock: VirtualClock, latency: float = 0.0, **slot: Any
) -> tuple[float, float]:
    """One request through the budget: (admitted, answered) on the clock."""
    async with budget.slot(KEY, **slot):
        admitted = clock.monotonic()
        await clock.sleep(latency)
    return admitted, clock.monotonic()


@pytest.mark.anyio
async def test_two_processes_never_count_more_than_the_limit(processes: Processes) -> None:
    rng = random.Random(7)
    clock = processes.clock
    budgets = [processes.budget(0, 5, recheck=0.25), processes.budget(1, 5, recheck=0.25)]
    latencies = [rng.choice([0.0, 0.25, 2.0, 6.0]) for _ in range(40)]

    done = await processes.run(*(_request(budgets[n % 2], clock, s) for n, s in enumerate(latencies)))

    assert len(done) == 40
    assert _most_counting(done) == 5
    assert await processes.rows() <= 5  # what no longer counts is deleted as admissions go


@pytest.mark.anyio
async def test_a_burst_from_two_processes_fills_each_window_exactly(processes: Processes) -> None:
    clock = processes.clock
    budgets = [processes.budget(0, 5), processes.budget(1, 5)]

    done = await processes.run(*(_request(budgets[n % 2], clock) for n in range(23)))

    admitted = sorted(start for start, _ in done)
    assert admitted == [0.0] * 5 + [10.0] * 5 + [20.0] * 5 + [30.0] * 5 + [40.0] * 3


@pytest.mark.anyio
async def test_a_request_of_a_killed_process_stops_counting_after_its_bound(processes: Processes) -> None:
    clock = processes.clock
    dead = processes.budget(0, 2)
    for _ in range(2):  # admitted, and never answered: the process died in the request
        assert (await processes.stores[0].budget_admit(KEY, 2, WINDOW, clock(), dead.stale_after)).request_id
    alive = processes.budget(1, 2, recheck=0.5)
    with pytest.raises(BudgetBusy) as busy:
        await _request(alive, clock, within=60.0)
    assert busy.value.wait is None

    [(admitted, _)] = await processes.run(_request(alive, clock))

    assert admitted == pytest.approx(TIMEOUT + WINDOW, abs=0.5)
    assert admitted >= TIMEOUT + WINDOW


@pytest.mark.anyio
async def test_a_penalty_holds_the_other_process_too(processes: Processes) -> None:
    clock = processes.clock
    first, second = processes.budget(0, 100), processes.budget(1, 100)
    await first.penalize(KEY, 4.0)
    await second.penalize(KEY, 1.0)  # a shorter penalty does not shorten the block
    with pytest.raises(BudgetBusy) as busy:
        await _request(second, clock, within=1.0)
    assert busy.value.wait == pytest.approx(4.0)

    [(admitted, _)] = await processes.run(_request(second, clock))

    assert admitted == pytest.approx(4.0)


@pytest.mark.anyio
async def test_within_takes_a_short_wait_and_refuses_a_longer_one(processes: Processes) -> None:
    clock = processes.clock
    first, second = processes.budget(0, 1), processes.budget(1, 1)
    await processes.run(_request(first, clock, 0.25))
    with pytest.raises(BudgetBusy) as busy:
        await _request(second, clock, within=5.0)
    assert busy.value.wait == pytest.approx(WINDOW)
    assert clock.monotonic() == pytest.approx(0.25)
    clock.advance(6.0)

    [(admitted, _)] = await processes.run(_request(second, clock, within=5.0))

    assert admitted == pytest.approx(0.25 + WINDOW)


@pytest.mark.anyio
async def test_within_refuses_while_the_other_process_holds_every_slot(processes: Processes) -> None:
    clock = processes.clock
    first, second = processes.budget(0, 1), processes.budget(1, 1)
    async with first.slot(KEY):
        with pytest.raises(BudgetBusy) as busy:
            await _request(second, clock, within=60.0)
    assert busy.value.wait is None


@pytest.mark.anyio
async def test_within_refuses_behind_a_waiter_of_its_own_process(processes: Processes) -> None:
    clock = processes.clock
    first, second = processes.budget(0, 1), processes.budget(1, 1)
    await processes.run(_request(first, clock))
    waiter = asyncio.ensure_future(_request(second, clock))
    await processes.settled()
    clock.advance(3.0)
    with pytest.raises(BudgetBusy) as busy:
        await _request(second, clock, within=60.0)
    assert busy.value.wait == pytest.approx(WINDOW - 3.0)
    [(admitted, _)] = await processes.run(waiter)
    assert admitted == pytest.approx(WINDOW)


@pytest.mark.anyio
async def test_an_answer_after_its_row_was_forgotten_counts_again(processes: Processes) -> None:
    """A request that outlived its bound: its row went as stale, and its answer brings it back."""
    clock = processes.clock
    store = processes.stores[0].store
    started = clock()
    slow = await store.budget_admit(KEY, 1, WINDOW, started, TIMEOUT)
    assert slow.request_id
    clock.advance(TIMEOUT)
    taken = await store.budget_admit(KEY, 2, WINDOW, clock(), TIMEOUT)  # forgets the slow one
    assert taken.request_id
    await store.budget_release(KEY, taken.request_id, clock(), clock())
    await store.budget_release(KEY, slow.request_id, started, clock())
    assert await store.budget_admit(KEY, 2, WINDOW, clock(), TIMEOUT) == Admission(None, WINDOW)


@pytest.mark.anyio
async def test_keys_have_separate_budgets(processes: Processes) -> None:
    clock = processes.clock
    store = processes.stores[0]
    assert (await store.budget_admit("runbase:a", 1, WINDOW, clock(), TIMEOUT)).request_id
    assert (await store.budget_admit("runbase:b", 1, WINDOW, clock(), TIMEOUT)).request_id
    assert await store.budget_admit("runbase:a", 1, WINDOW, clock(), TIMEOUT) == Admission(None, None)
