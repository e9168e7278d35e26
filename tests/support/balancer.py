"""A round-robin load balancer on loopback: the one public URL in front of several web processes, as
a platform's router is. It records every answer it passes back, so a test can check none was a 5xx, and
answers 502 (recorded with the error) when a backend cannot be reached, as a router does."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import Response

from receiver.background import BackgroundServer

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass
class Balancer:
    """Sends each request to the next of `backends` (base URLs; set them before the first request)."""

    backends: list[str] = field(default_factory=list)
    answers: list[tuple[str, str, int]] = field(default_factory=list)  # (backend, path, status)
    unreachable: list[tuple[str, str, str]] = field(default_factory=list)  # (backend, path, error)
    _turn: Iterator[int] = field(default_factory=itertools.count)
    _client: httpx.AsyncClient | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        backend = self.backends[next(self._turn) % len(self.backends)]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.body()
        try:
            answer = await self._http().request(
                request.method, backend + request.url.path, params=request.url.query, content=body,
                headers=headers,
            )  # fmt: skip
        except httpx.TransportError as exc:
            self.unreachable.append((backend, request.url.path, repr(exc)))
            await Response(status_code=502)(scope, receive, send)
            return
        self.answers.append((backend, request.url.path, answer.status_code))
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
        await Response(answer.content, status_code=answer.status_code, headers=kept)(scope, receive, send)

    def _http(self) -> httpx.AsyncClient:
        """One client, kept alive, as a router keeps its connections to the backends: a client per request
        cost the test's own process more than the backends' work, and webhooks timed out in its queue."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=None))
        return self._client

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
        await send({"type": "lifespan.shutdown.complete"})


@contextmanager
def bound_balancer() -> Iterator[tuple[Balancer, BackgroundServer]]:
    """A balancer whose URL is known at once; it starts serving when the `with` block calls `start()`."""
    balancer = Balancer()
    server = BackgroundServer(balancer)
    try:
        yield balancer, server
    finally:
        server.stop()
