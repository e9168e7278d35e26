"""Time as a seam: code that reads or waits on time takes a Clock; tests give it a VirtualClock."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def __call__(self) -> datetime:
        """The current time, timezone-aware UTC."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; only differences mean anything."""

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` on this clock."""


class SystemClock:
    """The machine's clocks and asyncio's sleep."""

    def __call__(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


system_clock = SystemClock()


@dataclass(eq=False)
class _Sleeper:
    deadline: float
    loop: asyncio.AbstractEventLoop
    woken: asyncio.Future[None] = field(repr=False)


class VirtualClock:
    """Time that moves only when a test advances it.

    One clock may be shared by the test's thread and servers running in other threads: a sleeper
    wakes on its own event loop as soon as `advance` takes the clock to or past its deadline, and
    `wait_for_sleepers` lets a test wait until the code under test has gone to sleep.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self.start = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._elapsed = 0.0
        self._sleepers: list[_Sleeper] = []
        self._changed = threading.Condition()

    def __call__(self) -> datetime:
        return self.start + timedelta(seconds=self._elapsed)

    def monotonic(self) -> float:
        return self._elapsed

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        with self._changed:
            sleeper = _Sleeper(self._elapsed + seconds, loop, loop.create_future())
            self._sleepers.append(sleeper)
            self._changed.notify_all()
        try:
            await sleeper.woken
        finally:
            with self._changed:
                if sleeper in self._sleepers:
                    self._sleepers.remove(sleeper)
                    self._changed.notify_all()

    @property
    def sleepers(self) -> list[float]:
        """The deadlines (on `monotonic()`) of everything asleep on this clock, soonest first."""
        with self._changed:
            return sorted(s.deadline for s in self._sleepers)

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline is reached."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self._move(lambda elapsed: elapsed + seconds)

    def advance_to(self, moment: datetime | float) -> None:
        """Move time forward to `moment`: a datetime, or a reading of `monotonic()` such as a
        sleeper's deadline (reached exactly, with no rounding on the way). The past is a no-op."""
        if isinstance(moment, datetime):
            offset = (moment - self.start).total_seconds()
            self._move(lambda elapsed: max(elapsed, offset))
        else:
            target = moment
            self._move(lambda elapsed: max(elapsed, target))

    def _move(self, to: Callable[[float], float]) -> None:
        with self._changed:
            self._elapsed = to(self._elapsed)
            due = [s for s in self._sleepers if s.deadline <= self._elapsed]
            for sleeper in due:
                self._sleepers.remove(sleeper)
            self._changed.notify_all()
        for sleeper in due:
            with contextlib.suppress(RuntimeError):  # that loop has closed: nothing is left to wake
                sleeper.loop.call_soon_threadsafe(_wake, sleeper.woken)

    def wait_for_sleepers(self, count: int, timeout: float = 20.0) -> list[float]:
        """Block until at least `count` sleepers wait on this clock; their deadlines, soonest first.
        `timeout` is real seconds: it bounds a test that would otherwise hang. Call it from a thread
        whose event loop no sleeper needs (a test's own thread, with the servers in theirs)."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._sleepers) >= count, timeout):
                raise TimeoutError(f"{len(self._sleepers)} sleepers within {timeout} s, expected {count}")
            return sorted(s.deadline for s in self._sleepers)


def _wake(woken: asyncio.Future[None]) -> None:
    if not woken.done():
        woken.set_result(None)
