"""Coalesce (receiver/store/coalesce.py): calls made together share one flush, each answered with its own
outcome; groups grow while `parallel` flushes are out, never past `most`."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from receiver.store.coalesce import Coalesce


class Recorder:
    """A flush that answers each item with its double (an item below 0 with its own error), and holds
    every flush while `gate` is clear."""

    def __init__(self) -> None:
        self.groups: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.out = 0

    async def __call__(self, items: list[int]) -> Sequence[int | BaseException]:
        self.groups.append(items)
        self.out += 1
        try:
            await self.gate.wait()
        finally:
            self.out -= 1
        return [ValueError(f"refused {i}") if i < 0 else 2 * i for i in items]


async def passes(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


@pytest.mark.anyio
async def test_calls_made_in_one_pass_share_one_flush_and_each_gets_its_own_outcome() -> None:
    flush = Recorder()
    group = Coalesce(flush, most=64, parallel=2)
    outcomes = await asyncio.gather(*(group.submit(i) for i in (1, 2, -3, 4)), return_exceptions=True)
    assert flush.groups == [[1, 2, -3, 4]]
    assert outcomes[:2] == [2, 4]
    assert outcomes[3] == 8
    assert isinstance(outcomes[2], ValueError)
    assert str(outcomes[2]) == "refused -3"


@pytest.mark.anyio
async def test_a_lone_call_is_flushed_alone_and_at_once() -> None:
    flush = Recorder()
    group = Coalesce(flush, most=64, parallel=2)
    assert await group.submit(5) == 10
    assert await group.submit(6) == 12
    assert flush.groups == [[5], [6]]


@pytest.mark.anyio
async def test_calls_made_while_every_flush_is_out_wait_for_the_next_one_together() -> None:
    flush = Recorder()
    flush.gate.clear()
    group = Coalesce(flush, most=64, parallel=2)
    first = asyncio.ensure_future(group.submit(1))
    await passes(3)
    second = asyncio.ensure_future(group.submit(2))
    await passes(3)
    assert flush.groups == [[1], [2]]
    assert flush.out == 2
    later = [asyncio.ensure_future(group.submit(i)) for i in (3, 4)]
    await passes(3)
    later.append(asyncio.ensure_future(group.submit(5)))  # a pass after: still the same group
    await passes(3)
    assert flush.groups == [[1], [2]]  # the third waits for a slot, still open
    flush.gate.set()
    assert await asyncio.gather(first, second, *later) == [2, 4, 6, 8, 10]
    assert flush.groups == [[1], [2], [3, 4, 5]]


@pytest.mark.anyio
async def test_a_group_never_grows_past_most() -> None:
    flush = Recorder()
    group = Coalesce(flush, most=3, parallel=1)
    assert await asyncio.gather(*(group.submit(i) for i in range(7))) == [0, 2, 4, 6, 8, 10, 12]
    assert flush.groups == [[0, 1, 2], [3, 4, 5], [6]]


@pytest.mark.anyio
async def test_a_flush_that_raises_fails_its_group_only() -> None:
    calls = 0

    async def flaky(items: list[int]) -> Sequence[int | BaseException]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("down")
        return items

    group = Coalesce(flaky, most=64, parallel=1)
    failed = await asyncio.gather(group.submit(1), group.submit(2), return_exceptions=True)
    assert [type(outcome) for outcome in failed] == [ConnectionError, ConnectionError]
    assert await asyncio.gather(group.submit(3), group.submit(4)) == [3, 4]


@pytest.mark.anyio
async def test_a_cancelled_caller_s_item_is_still_flushed_and_the_others_answered() -> None:
    flush = Recorder()
    flush.gate.clear()
    group = Coalesce(flush, most=64, parallel=1)
    leaving = asyncio.ensure_future(group.submit(1))
    staying = asyncio.ensure_future(group.submit(2))
    await passes(3)
    leaving.cancel()
    flush.gate.set()
    assert await staying == 4
    assert flush.groups == [[1, 2]]
    assert leaving.cancelled()


@pytest.mark.anyio
async def test_drain_waits_for_every_group_submitted() -> None:
    flush = Recorder()
    flush.gate.clear()
    group = Coalesce(flush, most=64, parallel=1)
    calls = [asyncio.ensure_future(group.submit(i)) for i in range(3)]
    await passes(3)
    draining = asyncio.ensure_future(group.drain())
    await passes(3)
    assert not draining.done()
    flush.gate.set()
    await draining
    assert all(call.done() for call in calls)
