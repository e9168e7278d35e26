"""A signal the dashboard's live pages wait on: this process recorded something they show."""

from __future__ import annotations

import asyncio


class Changes:
    """A version number bumped on every change (a webhook or poll recorded, a submit, a delivery
    round, a replay), and a wake-up for everything waiting on it. In-process and loop-bound, like the
    worker's wake: the default `receiver serve` runs the worker, so every change passes through here."""

    def __init__(self) -> None:
        self.version = 0
        self.closed = False
        self._event: asyncio.Event | None = None

    def bump(self) -> None:
        self.version += 1
        event, self._event = self._event, None
        if event is not None:
            event.set()

    def close(self) -> None:
        """The server is stopping: waiters return, so open event streams end and let it stop."""
        self.closed = True
        self.bump()

    async def wait(self, since: int) -> None:
        """Return once the version is past `since` (at once when it already is) or the hub is closed;
        callers bound it with `asyncio.timeout`."""
        while self.version == since and not self.closed:
            if self._event is None:
                self._event = asyncio.Event()
            await self._event.wait()
