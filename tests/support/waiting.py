"""Waiting for a condition another thread or process brings about: poll it, never sleep for time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import pytest

from receiver.clock import VirtualClock

POLL = 0.005  # real seconds between looks: how often to check, not how long anything takes


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 20.0,
    *,
    clock: VirtualClock | None = None,
    step: float = 1.0,
) -> Any:
    """Poll `predicate` until it returns something truthy, and return that. With `clock`, each look
    that fails also advances the virtual clock by `step`, for a condition that needs time to pass.
    `timeout` is real seconds and only bounds a test that would otherwise hang."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        if clock is not None:
            clock.advance(step)
        time.sleep(POLL)


async def wait_until_async(predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
    """`wait_until` for async tests: the (blocking) predicate runs in a worker thread, so the test's
    event loop keeps serving whatever brings the condition about."""
    with anyio.fail_after(timeout):
        while not (value := await anyio.to_thread.run_sync(predicate)):
            await anyio.sleep(POLL)
        return value
