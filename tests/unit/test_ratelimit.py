"""LocalBudget: a sliding window per key that waits and never overshoots, on a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from receiver.providers.ratelimit import LocalBudget, RateBudget, budget_key


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


def test_local_budget_is_a_rate_budget() -> None:
    assert RateBudget in LocalBudget.__mro__


def test_budget_key_hides_the_api_key() -> None:
    key = budget_key("runbase", "rb_secret")
    assert key.startswith("runbase:")
    assert "rb_secret" not in key
    assert key == budget_key("runbase", "rb_secret")
    assert key != budget_key("runbase", "rb_other")


@pytest.mark.anyio
async def test_within_the_limit_nothing_waits() -> None:
    time = FakeTime()
    budget = _budget(time)
    for _ in range(3):
        await budget.acquire("k")
    assert time.sleeps == []


@pytest.mark.anyio
async def test_over_the_limit_waits_for_the_oldest_to_leave_the_window() -> None:
    time = FakeTime()
    budget = _budget(time)
    for _ in range(3):
        await budget.acquire("k")
        time.now += 1.0
    await budget.acquire("k")
    assert time.sleeps == [pytest.approx(7.0)]
    assert time.now == pytest.approx(1010.0)


@pytest.mark.anyio
async def test_keys_have_separate_windows() -> None:
    time = FakeTime()
    budget = _budget(time, limit=1)
    await budget.acquire("a")
    await budget.acquire("b")
    assert time.sleeps == []


@pytest.mark.anyio
async def test_concurrent_burst_never_exceeds_the_limit() -> None:
    time = FakeTime()
    budget = _budget(time, limit=5, window=10.0)
    stamps: list[float] = []

    async def one() -> None:
        await budget.acquire("k")
        stamps.append(time.now)

    await asyncio.gather(*(one() for _ in range(23)))
    assert len(stamps) == 23
    assert _max_in_window(stamps, 10.0) == 5
    assert max(stamps) - min(stamps) == pytest.approx(40.0)


@pytest.mark.anyio
async def test_penalty_holds_every_request_for_the_key() -> None:
    time = FakeTime()
    budget = _budget(time, limit=100)
    budget.penalize("k", 4.0)
    budget.penalize("k", 1.0)
    await budget.acquire("other")
    assert time.sleeps == []
    await budget.acquire("k")
    assert time.now == pytest.approx(1004.0)


@pytest.mark.anyio
async def test_margin_widens_the_window() -> None:
    time = FakeTime()
    budget = LocalBudget(1, 1.0, margin=0.25, clock=time.clock, sleep=time.sleep)
    await budget.acquire("k")
    await budget.acquire("k")
    assert time.now == pytest.approx(1001.25)


def test_wait_time_is_zero_for_an_unknown_key() -> None:
    assert LocalBudget().wait_time("nobody") == 0.0


@pytest.mark.parametrize(("limit", "window"), [(0, 10.0), (5, 0.0)])
def test_nonsense_limits_are_refused(limit: int, window: float) -> None:
    with pytest.raises(ValueError, match="limit"):
        LocalBudget(limit, window)


@pytest.mark.anyio
async def test_real_clock_small_window() -> None:
    budget = LocalBudget(limit=2, window=0.2, margin=0.0)
    loop = asyncio.get_running_loop()
    stamps: list[float] = []
    for _ in range(5):
        await budget.acquire("k")
        stamps.append(loop.time())
    assert stamps[-1] - stamps[0] >= 0.4
    assert _max_in_window(stamps, 0.2) <= 2
