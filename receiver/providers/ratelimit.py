"""Per-key request budgets: how many provider requests a key may make in a sliding window."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

Sleep = Callable[[float], Awaitable[None]]


def budget_key(provider: str, api_key: str) -> str:
    """The budget's name for one API key: a hash, so the key itself never reaches a store or a log."""
    digest = hashlib.sha256(api_key.encode()).hexdigest()[:24]
    return f"{provider}:{digest}"


class RateBudget(Protocol):
    """A shared allowance of requests per key.

    On PostgreSQL: one row per key with `blocked_until` plus a table of request timestamps; `acquire`
    locks the key's row (`SELECT ... FOR UPDATE`), counts the window, inserts or sleeps and retries.
    """

    async def acquire(self, key: str) -> None:
        """Wait until one more request for `key` fits in the budget, and count it."""

    def penalize(self, key: str, seconds: float) -> None:
        """The provider said slow down: no request for `key` starts within `seconds` from now."""


class LocalBudget(RateBudget):
    """At most `limit` acquisitions per `window` seconds per key, within one process.

    `margin` widens the window a little: requests leave here in order but reach the provider with
    network jitter, so two that left exactly `window` apart may arrive slightly closer.
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
        self._stamps: dict[str, deque[float]] = {}
        self._blocked_until: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def wait_time(self, key: str) -> float:
        """Seconds until the next request for `key` may start (0 when it may start now)."""
        now = self._clock()
        stamps = self._stamps.get(key)
        wait = max(0.0, self._blocked_until.get(key, 0.0) - now)
        if stamps is not None:
            span = self.window + self.margin
            while stamps and stamps[0] + span <= now:
                stamps.popleft()
            if len(stamps) >= self.limit:
                wait = max(wait, stamps[0] + span - now)
        return wait

    async def acquire(self, key: str) -> None:
        # One waiter per key at a time: callers are served in arrival order and never overshoot.
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            while (wait := self.wait_time(key)) > 0:
                await self._sleep(wait)
            self._stamps.setdefault(key, deque()).append(self._clock())

    def penalize(self, key: str, seconds: float) -> None:
        if seconds <= 0:
            return
        until = self._clock() + seconds
        self._blocked_until[key] = max(self._blocked_until.get(key, 0.0), until)
