"""Per-key request budgets: how many provider requests a key may make in a sliding window."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from receiver.clock import Clock, system_clock

if TYPE_CHECKING:
    from receiver.store.base import Admission

Sleep = Callable[[float], Awaitable[None]]


def budget_key(provider: str, api_key: str) -> str:
    """The budget's name for one API key: a hash, so the key itself never reaches a store or a log."""
    digest = hashlib.sha256(api_key.encode()).hexdigest()[:24]
    return f"{provider}:{digest}"


class BudgetBusy(Exception):
    """No slot for the key within the wait the caller allowed (the caller queues the request instead)."""

    def __init__(self, key: str, wait: float | None) -> None:
        self.key = key
        self.wait = wait
        when = "until an answer comes back" if wait is None else f"for {wait:.1f} s"
        super().__init__(f"the rate budget is full {when}")


class RateBudget(Protocol):
    """An allowance of requests per key: at most `limit` requests in any `window` seconds.

    A request holds its slot from the moment it is admitted until its answer came back plus the
    window: the provider counts it when it arrives, which is somewhere in between, so jitter in
    either direction cannot put one request too many into a provider's window.
    """

    def slot(self, key: str, *, within: float | None = None) -> AbstractAsyncContextManager[None]:
        """Wait until one more request for `key` fits, and hold its slot while the request runs.

        With `within`, raise BudgetBusy at once instead of waiting longer than `within` seconds.
        """

    async def penalize(self, key: str, seconds: float) -> None:
        """The provider said slow down: no request for `key` starts within `seconds` from now."""


def slot_wait(counting: int, limit: int, blocked_for: float, first_end_in: float | None) -> float | None:
    """Seconds until one more request may start (0: now; None: until an answer comes back), given the
    requests that count (in flight or answered within the window), the seconds the key stays blocked,
    and the seconds until the earliest answered one stops counting (None when all are in flight)."""
    wait = max(0.0, blocked_for)
    if counting >= limit:
        if first_end_in is None:
            return None
        wait = max(wait, first_end_in)
    return wait


@dataclass
class _Key:
    in_flight: int = 0
    # When each answered request stops counting (answer + window + margin), in order: the clock is
    # monotonic, so later answers always end later.
    ends: deque[float] = field(default_factory=deque)
    blocked_until: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    answered: asyncio.Event = field(default_factory=asyncio.Event)


class LocalBudget(RateBudget):
    """At most `limit` requests per `window` seconds per key, within one process.

    `margin` widens the window a little, for a provider whose clock stamps a request a moment after
    its answer left.
    """

    def __init__(
        self,
        limit: int = 20,
        window: float = 10.0,
        *,
        margin: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("a budget needs limit >= 1 and window > 0")
        self.limit = limit
        self.window = window
        self.margin = margin
        self._clock = clock
        self._sleep = sleep
        self._keys: dict[str, _Key] = {}

    def wait_time(self, key: str) -> float | None:
        """Seconds until the next request for `key` may start: 0 now, None until an answer comes back."""
        state = self._keys.get(key)
        if state is None:
            return 0.0
        now = self._clock()
        while state.ends and state.ends[0] <= now:
            state.ends.popleft()
        first_end_in = state.ends[0] - now if state.ends else None
        return slot_wait(
            state.in_flight + len(state.ends), self.limit, state.blocked_until - now, first_end_in
        )

    @asynccontextmanager
    async def slot(self, key: str, *, within: float | None = None) -> AsyncIterator[None]:
        state = self._keys.setdefault(key, _Key())
        if within is not None:
            wait = self.wait_time(key)
            if state.lock.locked() or wait is None or wait > within:
                raise BudgetBusy(key, wait)
        # One waiter per key at a time: callers are served in arrival order and never overshoot.
        async with state.lock:
            while (wait := self.wait_time(key)) != 0:
                if wait is None:
                    # Every slot is held by a request still waiting for its answer; an answer only
                    # turns that into a known wait (answers end later than any known end).
                    state.answered.clear()
                    await state.answered.wait()
                else:
                    await self._sleep(wait)
            state.in_flight += 1
        try:
            yield
        finally:
            state.in_flight -= 1
            state.ends.append(self._clock() + self.window + self.margin)
            state.answered.set()

    async def penalize(self, key: str, seconds: float) -> None:
        if seconds <= 0:
            return
        state = self._keys.setdefault(key, _Key())
        state.blocked_until = max(state.blocked_until, self._clock() + seconds)


class BudgetStore(Protocol):
    """What StoreBudget needs from the job store (SQLStore has it): each call is one transaction."""

    async def budget_admit(
        self, key: str, limit: int, window: float, now: datetime, stale_after: float
    ) -> Admission: ...

    async def budget_release(
        self, key: str, request_id: str, started_at: datetime, now: datetime
    ) -> None: ...

    async def budget_penalize(self, key: str, until: datetime) -> None: ...


class StoreBudget(RateBudget):
    """At most `limit` requests per `window` seconds per key, for every process on one job store.

    The store keeps a row per request from admission to answer, and admits in one transaction that
    locks the key. A request still in flight `request_timeout + window` seconds after it started
    belongs to a process that died: it stops counting, so a crash cannot hold the budget for ever.
    Within a process one waiter per key asks the store at a time (callers are served in arrival
    order); when every slot waits for an answer, it asks again every `recheck` seconds.
    """

    def __init__(
        self,
        store: BudgetStore,
        limit: int = 20,
        window: float = 10.0,
        *,
        margin: float = 0.05,
        # httpx's timeout bounds each phase (connect, send, read), not the whole request: twice it
        request_timeout: float = 60.0,
        recheck: float = 0.1,
        clock: Clock = system_clock,
    ) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("a budget needs limit >= 1 and window > 0")
        self.store = store
        self.limit = limit
        self.window = window + margin
        self.stale_after = request_timeout + self.window
        self.recheck = recheck
        self._clock = clock
        self._waiting: dict[str, asyncio.Lock] = {}
        self._free_at: dict[str, float | None] = {}  # when the waiting head last heard a slot frees

    @asynccontextmanager
    async def slot(self, key: str, *, within: float | None = None) -> AsyncIterator[None]:
        lock = self._waiting.setdefault(key, asyncio.Lock())
        if within is not None and lock.locked():
            moment = self._clock.monotonic()
            free_at = self._free_at.get(key, moment)  # not there: the waiting head is asking right now
            raise BudgetBusy(key, None if free_at is None else max(0.0, free_at - moment))
        async with lock:
            started_at, request_id = await self._admit(key, within)
        try:
            yield
        finally:
            await self.store.budget_release(key, request_id, started_at, self._clock())

    async def _admit(self, key: str, within: float | None) -> tuple[datetime, str]:
        deadline = None if within is None else self._clock.monotonic() + within
        while True:
            now = self._clock()
            admission = await self.store.budget_admit(key, self.limit, self.window, now, self.stale_after)
            if admission.request_id is not None:
                self._free_at.pop(key, None)
                return now, admission.request_id
            wait = admission.wait
            moment = self._clock.monotonic()
            self._free_at[key] = None if wait is None else moment + wait
            if deadline is not None and (wait is None or moment + wait > deadline):
                raise BudgetBusy(key, wait)
            await self._clock.sleep(self.recheck if wait is None else wait)

    async def penalize(self, key: str, seconds: float) -> None:
        if seconds > 0:
            await self.store.budget_penalize(key, self._clock() + timedelta(seconds=seconds))
