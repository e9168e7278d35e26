"""The budget rule, and LocalBudget: a sliding window per key, counted from admission to answer plus the
window, on a fake clock. StoreBudget, the same over the job store, is tested in tests/integration."""

from __future__ import annotations

import asyncio
import random

import pytest

from receiver.providers.ratelimit import (
    BudgetBusy,
    LocalBudget,
    RateBudget,
    StoreBudget,
    budget_key,
    slot_wait,
)
from receiver.store import SQLStore
from receiver.store.sqlite import SQLiteConnector


class FakeTime:
    """A clock that only moves when something sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def _budget(time: FakeTime, limit: int = 3, window: float = 10.0) -> LocalBudget:
    return LocalBudget(limit, window, margin=0.0, clock=time.clock, sleep=time.sleep)


def _max_in_window(stamps: list[float], window: float) -> int:
    return max(sum(1 for t in stamps if start <= t < start + window) for start in stamps)


def test_both_budgets_are_rate_budgets() -> None:
    assert RateBudget in LocalBudget.__mro__
    assert RateBudget in StoreBudget.__mro__


@pytest.mark.parametrize(
    ("counting", "blocked_for", "first_end_in", "wait"),
    [
        (2, 0.0, None, 0.0),  # room for one more
        (0, -3.0, None, 0.0),  # a block that has passed
        (1, 5.0, None, 5.0),  # room, but blocked
        (3, 0.0, 4.0, 4.0),  # full: the earliest answered request frees a slot
        (3, 0.0, None, None),  # full, every request waits for its answer
        (3, 5.0, None, None),
        (3, 5.0, 2.0, 5.0),  # the longer of the block and the first end
        (3, 1.0, 2.0, 2.0),
    ],
)
def test_slot_wait(counting: int, blocked_for: float, first_end_in: float | None, wait: float | None) -> None:
    assert slot_wait(counting, 3, blocked_for, first_end_in) == wait


def test_budget_key_hides_the_api_key() -> None:
    key = budget_key("runbase", "rb_secret")
    assert key.startswith("runbase:")
    assert "rb_secret" not in key
    assert key == budget_key("runbase", "rb_secret")
    assert key != budget_key("runbase", "rb_other")


async def _request(budget: LocalBudget, time: FakeTime, latency: float = 0.0, key: str = "k") -> float:
    """One request through the budget: admitted, then answered `latency` seconds later."""
    async with budget.slot(key):
        admitted = time.now
        if latency:
            await time.sleep(latency)
    return admitted


@pytest.mark.anyio
async def test_within_the_limit_nothing_waits() -> None:
    time = FakeTime()
    budget = _budget(time)
    for _ in range(3):
        await _request(budget, time)
    assert time.sleeps == []


@pytest.mark.anyio
async def test_a_request_counts_until_its_answer_plus_the_window() -> None:
    time = FakeTime()
    budget = _budget(time)
    for _ in range(3):
        await _request(budget, time, latency=0.5)
        time.now += 0.5
    # Answered at 1000.5, 1001.5, 1002.5: the first stops counting at 1010.5, not 1010.
    assert await _request(budget, time) == pytest.approx(1010.5)


@pytest.mark.anyio
async def test_with_every_slot_in_flight_the_next_waits_for_an_answer_then_a_window() -> None:
    time = FakeTime()
    budget = _budget(time, limit=1)
    answer = asyncio.Event()

    async def slow() -> None:
        async with budget.slot("k"):
            await answer.wait()

    first = asyncio.create_task(slow())
    await asyncio.sleep(0)
    assert budget.wait_time("k") is None
    second = asyncio.create_task(_request(budget, time))
    await asyncio.sleep(0)
    time.now += 30.0  # the first request takes 30 s to answer
    answer.set()
    await first
    assert await second == pytest.approx(1040.0)


@pytest.mark.anyio
async def test_a_failed_request_still_holds_its_slot_for_the_window() -> None:
    time = FakeTime()
    budget = _budget(time, limit=1)

    async def reset() -> None:
        async with budget.slot("k"):
            time.now += 2.0
            raise RuntimeError("connection reset")

    with pytest.raises(RuntimeError):
        await reset()
    assert budget.wait_time("k") == pytest.approx(10.0)


@pytest.mark.anyio
async def test_the_provider_never_sees_more_than_the_limit_in_any_window() -> None:
    """Whatever the latency, and wherever between send and answer the provider stamps a request."""
    rng = random.Random(7)
    time = FakeTime()
    budget = _budget(time, limit=5, window=10.0)
    arrivals: list[float] = []

    async def one() -> None:
        latency = rng.choice([0.0, 0.3, 2.0, 6.0])
        async with budget.slot("k"):
            sent = time.now
            await time.sleep(latency)
        arrivals.append(sent + latency * rng.random())

    await asyncio.gather(*(one() for _ in range(40)))
    assert len(arrivals) == 40
    assert _max_in_window(arrivals, 10.0) <= 5


@pytest.mark.anyio
async def test_keys_have_separate_windows() -> None:
    time = FakeTime()
    budget = _budget(time, limit=1)
    await _request(budget, time, key="a")
    await _request(budget, time, key="b")
    assert time.sleeps == []


@pytest.mark.anyio
async def test_concurrent_burst_never_exceeds_the_limit() -> None:
    time = FakeTime()
    budget = _budget(time, limit=5, window=10.0)
    stamps = await asyncio.gather(*(_request(budget, time) for _ in range(23)))
    assert len(stamps) == 23
    assert _max_in_window(list(stamps), 10.0) == 5
    assert max(stamps) - min(stamps) == pytest.approx(40.0)


@pytest.mark.anyio
async def test_penalty_holds_every_request_for_the_key() -> None:
    time = FakeTime()
    budget = _budget(time, limit=100)
    await budget.penalize("k", 4.0)
    await budget.penalize("k", 1.0)
    await _request(budget, time, key="other")
    assert time.sleeps == []
    assert await _request(budget, time) == pytest.approx(1004.0)


@pytest.mark.anyio
async def test_margin_widens_the_window() -> None:
    time = FakeTime()
    budget = LocalBudget(1, 1.0, margin=0.25, clock=time.clock, sleep=time.sleep)
    await _request(budget, time)
    assert await _request(budget, time) == pytest.approx(1001.25)


def test_wait_time_is_zero_for_an_unknown_key() -> None:
    assert LocalBudget().wait_time("nobody") == 0.0


@pytest.mark.parametrize(("limit", "window"), [(0, 10.0), (5, 0.0)])
def test_nonsense_limits_are_refused(limit: int, window: float) -> None:
    with pytest.raises(ValueError, match="limit"):
        LocalBudget(limit, window)
    with pytest.raises(ValueError, match="limit"):
        StoreBudget(SQLStore(SQLiteConnector(":memory:")), limit, window)


@pytest.mark.anyio
async def test_within_refuses_a_wait_longer_than_allowed_and_takes_a_shorter_one() -> None:
    time = FakeTime()
    budget = _budget(time, limit=1)
    await _request(budget, time)
    with pytest.raises(BudgetBusy) as busy:
        async with budget.slot("k", within=5.0):
            pass
    assert busy.value.wait == pytest.approx(10.0)
    assert time.sleeps == []
    time.now += 6.0
    async with budget.slot("k", within=5.0):
        assert time.now == pytest.approx(1010.0)


@pytest.mark.anyio
async def test_within_refuses_while_every_slot_waits_for_an_answer() -> None:
    time = FakeTime()
    budget = _budget(time, limit=1)
    async with budget.slot("k"):
        with pytest.raises(BudgetBusy) as busy:
            async with budget.slot("k", within=60.0):
                pass
    assert busy.value.wait is None
