"""How `receiver serve` runs uvicorn: the limits a public endpoint needs, in one Config builder.

uvicorn bounds the idle time between requests (`timeout_keep_alive`) and, with `limit_concurrency`,
answers 503 beyond a number of connections, but it never times out a request head that is slow to
arrive and its httptools parser takes a head of any size. `GuardedProtocol` adds both to uvicorn's
own protocol classes; `BodyDeadline` bounds the time to read a request body and answers 408.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import uvicorn
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol


@dataclass(frozen=True)
class ServerLimits:
    """What `receiver serve` allows a client; the README's deploy section lists the defaults."""

    header_timeout: float = 10.0  # from connection (or the end of the last response) to a full head
    body_timeout: float = 30.0  # from the head to the end of the body, for the routes that read one
    keep_alive: int = 5  # idle seconds between requests on one connection
    max_header_bytes: int = 16 * 1024  # request line and headers together
    max_connections: int = 500  # uvicorn answers 503 to requests beyond (it counts idle connections)


class LimitedConfig(uvicorn.Config):
    """uvicorn's Config carrying the limits that its protocol instances read."""

    def __init__(self, app: Any, limits: ServerLimits, **options: Any) -> None:
        self.limits = limits
        super().__init__(
            bound_bodies(app, limits.body_timeout),
            http=_protocol_class(),
            timeout_keep_alive=limits.keep_alive,
            limit_concurrency=limits.max_connections,
            # h11 refuses a bigger head with a 400 of its own; leave the 431 to GuardedProtocol.
            h11_max_incomplete_event_size=limits.max_header_bytes + 1024 * 1024,
            **options,
        )


def bound_bodies(app: Any, timeout: float) -> ASGIApp:
    """`app` with every request body read within `timeout` seconds: an app that bounds its own (a
    `bound_bodies` method: the receiver's, whose webhook road does it cheaper) is asked to, any other
    is wrapped in BodyDeadline."""
    own = getattr(app, "bound_bodies", None)
    if own is not None:
        bounded: ASGIApp = own(timeout)
        return bounded
    return BodyDeadline(app, timeout)


def server_config(app: Any, limits: ServerLimits | None = None, **options: Any) -> LimitedConfig:
    """The Config `receiver serve` runs with; tests build their servers with it too."""
    return LimitedConfig(app, limits or ServerLimits(), **options)


class Server(uvicorn.Server):
    """uvicorn's server that calls `on_stop` as shutdown begins: uvicorn waits for every open response
    to end before it stops, and the dashboard's event streams end only when told."""

    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_stop = on_stop

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.on_stop()
        await super().shutdown(sockets)


LINGER = 1.0  # seconds a refused connection stays half-closed before it is closed


class GuardedProtocol(asyncio.Protocol):
    """Mixed into uvicorn's protocols: a request head must arrive whole within `header_timeout` and
    `max_header_bytes`, else 408 or 431 and the connection is closed (uvicorn would wait forever)."""

    config: uvicorn.Config
    cycle: Any
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    _limits = ServerLimits()
    _head_timer: asyncio.TimerHandle | None = None
    _head_bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if isinstance(self.config, LimitedConfig):
            self._limits = self.config.limits
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        draining = self._draining()  # the rest of a body answered before it was read: not a head
        super().data_received(data)
        if self.cycle is not cycle:  # uvicorn starts a cycle once a head is complete
            self._stop_head_timer()
        elif self._head_timer is not None and not draining:
            self._head_bytes += len(data)
            if self._head_bytes > self._limits.max_header_bytes:
                self._refuse(431, "Request Header Fields Too Large")

    def on_response_complete(self) -> None:
        cycle = self.cycle
        super().on_response_complete()  # type: ignore[misc]
        if self.cycle is cycle and not self.transport.is_closing():
            self._await_head()

    def _await_head(self) -> None:
        self._stop_head_timer()
        self._head_bytes = 0
        self._head_timer = self.loop.call_later(
            self._limits.header_timeout, self._refuse, 408, "Request Timeout"
        )

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _draining(self) -> bool:
        return self.cycle is not None and bool(self.cycle.more_body)

    def _refuse(self, status: int, phrase: str) -> None:
        self._stop_head_timer()
        if self.transport.is_closing():
            return
        if self.cycle is None or (self.cycle.response_complete and not self._draining()):
            body = phrase.encode()
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (status, phrase.encode(), len(body), body)
            )
        # A close with the client's bytes still unread sends a reset, which can reach the client before
        # it has read the answer and destroy it. So: end our side (the answer, then FIN), read no more,
        # and close a moment later, when the client has had the answer.
        self.transport.pause_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER, self.transport.close)


class GuardedH11(GuardedProtocol, H11Protocol):
    pass


def _protocol_class() -> type[asyncio.Protocol]:
    """httptools when installed (what uvicorn's "auto" picks: faster), else h11; either guarded."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return GuardedH11

    class GuardedHttpTools(GuardedProtocol, HttpToolsProtocol):
        pass

    return GuardedHttpTools


class BodyDeadline:
    """ASGI middleware: reading a request body takes at most `timeout` seconds from the first read,
    else 408 (raised into the route as HTTPException, which Starlette renders)."""

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline: float | None = None
        done = False

        async def bounded() -> Message:
            nonlocal deadline, done
            if done:  # the body is in: later reads wait for a disconnect, for as long as it takes
                return await receive()
            now = anyio.current_time()
            deadline = deadline if deadline is not None else now + self.timeout
            try:
                with anyio.fail_after(max(deadline - now, 0)):
                    message = await receive()
            except TimeoutError:
                raise HTTPException(408, "request body too slow", headers={"connection": "close"}) from None
            done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, bounded, send)


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket, so a busy port is one clear error before anything is printed."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    # The protocol from getaddrinfo (not 0) lets asyncio set TCP_NODELAY on accepted connections.
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def port_number(text: str) -> int:
    """A TCP port, 1 to 65535 (argparse turns the ValueError into one line and exit 2)."""
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port (1 to 65535)")
    return value
