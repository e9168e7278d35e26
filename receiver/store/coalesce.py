"""Calls that share one: many callers each wait for their own answer from a single call made for all of them.

Written here: DataLoader-style libraries (aiodataloader) also batch the calls of one event-loop pass and
answer each with its own value or error, but they are read caches. They fold calls with the same key
into one (two reports for one job must both apply) and send a batch every pass however many are out,
where this holds what comes while `parallel` groups are out, so the groups grow with the load.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
R = TypeVar("R")

# What `flush` answers for each item, in order: its result, or the exception that item alone raises.
Outcomes = Sequence["R | BaseException"]


class Coalesce(Generic[Item, R]):
    """`await submit(item)` answers with `flush(items)`'s outcome for that item, where `items` are the
    items submitted together: those submitted in the same pass of the event loop, and, while `parallel`
    flushes are out, every item submitted until one of them ends (at most `most` a group). At low load an
    item is flushed alone one pass after it was submitted; under load the groups grow with it, which is
    what cuts the cost per item. An item whose caller was cancelled is still flushed: what was sent
    may have been applied."""

    def __init__(
        self, flush: Callable[[list[Item]], Awaitable[Outcomes[R]]], *, most: int, parallel: int
    ) -> None:
        self._flush = flush
        self._most = most
        self._slots = asyncio.Semaphore(parallel)
        self._open: list[tuple[Item, asyncio.Future[R]]] | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, item: Item) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        group = self._open
        if group is None or len(group) >= self._most:
            group = self._open = []
            task = asyncio.get_running_loop().create_task(self._send(group))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        group.append((item, future))
        return await future

    async def _send(self, group: list[tuple[Item, asyncio.Future[R]]]) -> None:
        async with self._slots:
            if self._open is group:  # closed: what is submitted from now on starts the next group
                self._open = None
            try:
                outcomes = await self._flush([item for item, _ in group])
            except BaseException as exc:
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return
        for (_, future), outcome in zip(group, outcomes, strict=True):
            if future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    async def drain(self) -> None:
        """Wait until every group submitted so far was flushed."""
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
