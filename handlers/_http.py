"""Shared plumbing for the built-in handlers: one HTTP status -> error mapping, and lazily opened clients."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, suppress
from datetime import datetime
from typing import Generic, TypeVar

import httpx

from handlers import ConfigError, PermanentError, RetryLater
from receiver.schedule import parse_retry_after

T = TypeVar("T")

BODY_EXCERPT = 300


class DeliveryFailed(Exception):
    """A failure worth retrying (5xx, 408, 429 without a usable Retry-After, network errors)."""


def excerpt(text: str, limit: int = BODY_EXCERPT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_status(status: int, headers: Mapping[str, str], body: str, what: str, *, now: datetime) -> None:
    """Return on 2xx; otherwise raise the error that tells the dispatcher what to do next.

    `what` names the call ("slack", "forward to example.com") and must hold no secret.
    """
    if 200 <= status < 300:
        return
    detail = f"{what} answered {status}" + (f": {excerpt(body)}" if body.strip() else "")
    if status == 429:
        delay = parse_retry_after(headers.get("retry-after"), now)
        if delay is not None:
            raise RetryLater(delay, detail)
        raise DeliveryFailed(detail)
    if status >= 500 or status == 408:
        raise DeliveryFailed(detail)
    raise PermanentError(detail)


def transport_failure(exc: httpx.TransportError, what: str) -> DeliveryFailed:
    """A network error as a retryable failure; the message names the error class, never the URL."""
    reason = str(exc) or "no detail"
    return DeliveryFailed(f"{what}: {type(exc).__name__}: {excerpt(reason)}")


def check_http_url(value: object, key: str) -> str:
    """An absolute http(s) URL from config; messages never echo it (it may hold a token)."""
    if not isinstance(value, str):
        raise ConfigError(f"key {key!r}: must be an http(s) URL string")
    url = httpx.URL(value)
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(f"key {key!r}: must be an absolute http:// or https:// URL")
    return value


def check_transport(value: object) -> httpx.AsyncBaseTransport | None:
    """`transport` is the test seam for code (e.g. httpx.MockTransport), not a config key."""
    if value is None or isinstance(value, httpx.AsyncBaseTransport):
        return value
    raise ConfigError("key 'transport': only code may set it, to an httpx.AsyncBaseTransport")


class LoopResource(Generic[T]):
    """A client or pool opened on first use and reopened when the event loop changes.

    `receiver tick` and serverless invocations run a fresh event loop each time; a client bound to an
    earlier, closed loop would fail, so each loop gets its own.
    """

    def __init__(self, opener: Callable[[AsyncExitStack], Awaitable[T]]) -> None:
        self._opener = opener
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._stack: AsyncExitStack | None = None
        self._value: T | None = None

    async def get(self) -> T:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._lock is None:
            stale = self._stack
            self._loop, self._lock, self._stack, self._value = loop, asyncio.Lock(), None, None
            if stale is not None:
                with suppress(Exception):  # best effort: what was bound to the old loop may not close
                    await stale.aclose()
        async with self._lock:
            if self._value is None:
                stack = AsyncExitStack()
                try:
                    value = await self._opener(stack)
                except BaseException:
                    await stack.aclose()
                    raise
                self._stack, self._value = stack, value
            return self._value

    async def aclose(self) -> None:
        stack, same_loop = self._stack, self._loop is asyncio.get_running_loop()
        self._loop, self._lock, self._stack, self._value = None, None, None, None
        if stack is not None:
            if same_loop:
                await stack.aclose()
            else:
                with suppress(Exception):
                    await stack.aclose()


def http_client(
    timeout: float,
    transport: httpx.AsyncBaseTransport | None,
    *,
    follow_redirects: bool = False,
    max_redirects: int = 20,
    trust_env: bool = True,
) -> LoopResource[httpx.AsyncClient]:
    async def open_client(stack: AsyncExitStack) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            transport=transport,
            follow_redirects=follow_redirects,
            max_redirects=max_redirects,
            trust_env=trust_env,
            headers={"user-agent": "kling-receiver"},
        )
        return await stack.enter_async_context(client)

    return LoopResource(open_client)
