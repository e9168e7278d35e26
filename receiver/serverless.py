"""AWS Lambda entry points: `handler` serves the web app through Mangum (webhooks, admin routes),
`tick` runs one round of polling and dispatch from a schedule. Settings come from the environment.

A Lambda container runs one invocation at a time and keeps its memory between them, so each container
builds one Receiver and one event loop, and opens the store per invocation (a frozen container's
connections do not survive the freeze). Concurrent invocations run in separate containers that share
only the store, and with it the Runbase budget. Here a container is a thread: invocations from several
threads of one process (tests, a local driver) stay apart as concurrent containers do.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from mangum import Mangum

from receiver import logs
from receiver.app import create_app
from receiver.config import load_settings
from receiver.service import Receiver


class Container:
    """One container's state: its event loop, its Receiver, and the web app that Mangum drives."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.receiver = Receiver.from_settings(load_settings())
        # Mangum runs each invocation on the thread's current event loop: this container's.
        asyncio.set_event_loop(self.loop)
        self.web = Mangum(create_app(self.receiver, run_worker=False), lifespan="auto")

    def invoke(self, event: Any, context: Any) -> dict[str, Any]:
        """One API Gateway invocation; the app's lifespan opens and closes the store around it."""
        asyncio.set_event_loop(self.loop)
        return self.web(event, context)

    def tick(self) -> dict[str, int]:
        """One round of polling and dispatch on the same Receiver and loop as the web app."""
        return self.loop.run_until_complete(self._tick())

    async def _tick(self) -> dict[str, int]:
        await self.receiver.open()
        try:
            return await self.receiver.tick()
        finally:
            await self.receiver.close()

    def close(self) -> None:
        self.loop.close()


_local = threading.local()
_containers: list[Container] = []
_containers_lock = threading.Lock()


def container() -> Container:
    """The calling thread's container, built on its first invocation."""
    found: Container | None = getattr(_local, "container", None)
    if found is None or found.loop.is_closed():
        found = _local.container = Container()
        with _containers_lock:
            _containers.append(found)
    return found


def handler(event: Any, context: Any) -> dict[str, Any]:
    """The web function (API Gateway HTTP API or REST API events): webhooks and admin routes."""
    return container().invoke(event, context)


def tick(event: Any = None, context: Any = None) -> dict[str, int]:
    """The scheduled function (EventBridge): due submits, polls, timeouts and deliveries, then return."""
    return container().tick()


def shutdown() -> None:
    """Close every container's event loop (Lambda never does; a local driver or a test does at exit)."""
    with _containers_lock:
        closing = list(_containers)
        _containers.clear()
    for each in closing:
        each.close()


logs.configure()
container()  # Lambda's init phase builds the container, so a settings mistake fails the deployment
