"""VirtualClock: time moves only when told, and sleepers wake exactly when it reaches them."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import pytest

from receiver.clock import VirtualClock, system_clock

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def test_advance_moves_both_readings() -> None:
    clock = VirtualClock(START)
    clock.advance(1.5)
    assert clock() == START + timedelta(seconds=1.5)
    assert clock.monotonic() == 1.5
    clock.advance_to(START + timedelta(seconds=10))
    assert clock.monotonic() == 10
    clock.advance_to(2.0)  # the past: nothing moves
    assert clock.monotonic() == 10
    with pytest.raises(ValueError, match="back"):
        clock.advance(-1)


@pytest.mark.anyio
async def test_a_sleeper_wakes_when_its_deadline_is_reached_not_before() -> None:
    clock = VirtualClock(START)
    woke: list[float] = []

    async def nap() -> None:
        await clock.sleep(2)
        woke.append(clock.monotonic())

    task = asyncio.create_task(nap())
    await asyncio.sleep(0)
    assert clock.sleepers == [2]
    clock.advance(1.999)
    await asyncio.sleep(0)
    assert woke == []
    clock.advance_to(2.0)
    await task
    assert woke == [2.0]
    assert clock.sleepers == []


@pytest.mark.anyio
async def test_a_cancelled_sleeper_leaves_and_zero_only_yields() -> None:
    clock = VirtualClock()
    task = asyncio.create_task(clock.sleep(5))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.sleepers == []
    await clock.sleep(0)
    assert clock.monotonic() == 0


def test_a_sleeper_on_another_threads_loop_is_woken_and_waited_for() -> None:
    clock = VirtualClock()
    woke = threading.Event()

    def other_thread() -> None:
        async def nap() -> None:
            await clock.sleep(30)
            woke.set()

        asyncio.run(nap())

    thread = threading.Thread(target=other_thread)
    thread.start()
    assert clock.wait_for_sleepers(1) == [30]
    clock.advance(30)
    thread.join(timeout=10)
    assert woke.is_set()
    with pytest.raises(TimeoutError):
        clock.wait_for_sleepers(1, timeout=0.01)


@pytest.mark.anyio
async def test_the_system_clock_is_aware_utc_and_sleeps() -> None:
    assert system_clock().tzinfo is UTC
    before = system_clock.monotonic()
    await system_clock.sleep(0)
    assert system_clock.monotonic() >= before
