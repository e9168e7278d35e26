"""A clock for code that waits: its sleeps pass at once, move the time on, and are recorded."""

from __future__ import annotations

import asyncio
from datetime import datetime

from receiver.clock import VirtualClock


class SteppingClock(VirtualClock):
    """A VirtualClock whose `sleep` returns at once after moving time forward by its length.

    For a client's retry waits: a test asserts the exact waits (`slept`) instead of timing them.
    """

    def __init__(self, start: datetime | None = None) -> None:
        super().__init__(start)
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)
