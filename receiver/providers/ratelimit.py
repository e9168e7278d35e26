"""Per-key request budgets: how many provider requests a key may make in a sliding window."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

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

    def penalize(self, key: str, seconds: float) -> None:
        """The provider said slow down: no request for `key` starts within `seconds` from now."""


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
        wait = max(0.0, state.blocked_until - now)
        if state.in_flight + len(state.ends) >= self.limit:
            if not state.ends:
                return None
            wait = max(wait, state.ends[0] - now)
        return wait

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

    def penalize(self, key: str, seconds: float) -> None:
        if seconds <= 0:
            return
        state = self._keys.setdefault(key, _Key())
        state.blocked_until = max(state.blocked_until, self._clock() + seconds)
