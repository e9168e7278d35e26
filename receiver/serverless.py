"""AWS Lambda entry points: `handler` serves the web app through Mangum (webhooks, admin routes),
`tick` runs one round of polling and dispatch from a schedule. Settings come from the environment."""

from __future__ import annotations

import asyncio
from typing import Any

from mangum import Mangum

from receiver import logs
from receiver.app import create_app
from receiver.config import load_settings
from receiver.service import Receiver

logs.configure()
# Built once per container; the app's lifespan opens and closes the store around each invocation.
handler = Mangum(create_app(Receiver.from_settings(load_settings()), run_worker=False), lifespan="auto")


def tick(event: Any = None, context: Any = None) -> dict[str, int]:
    """The scheduled function (EventBridge): due polls, timeouts and deliveries, then return.
    Runs on the container's one event loop, the one Mangum uses, which lives across invocations."""
    return asyncio.get_event_loop().run_until_complete(_tick())


async def _tick() -> dict[str, int]:
    receiver = Receiver.from_settings(load_settings())
    await receiver.open()
    try:
        return await receiver.tick()
    finally:
        await receiver.close()
