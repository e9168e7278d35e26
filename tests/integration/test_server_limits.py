"""The limits `receiver serve` runs with, over real loopback sockets: slow heads and bodies are cut,
big heads are refused before they are read, and connections beyond the limit are answered 503.

Each server here is built by `server_config`, the builder `receiver serve` uses, with short bounds."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import closing

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from receiver.background import BackgroundServer
from receiver.serving import ServerLimits
from tests.support.waiting import wait_until

UPPER_BOUND = 5.0  # real seconds a socket read may block: only stops a test that would hang


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def read(request: Request) -> Response:
    return PlainTextResponse(f"read {len(await request.body())} bytes")


async def early(request: Request) -> Response:
    return PlainTextResponse("refused before reading the body", status_code=401)


APP = Starlette(
    routes=[
        Route("/healthz", healthz),
        Route("/read", read, methods=["POST"]),
        Route("/early", early, methods=["POST"]),
    ]
)


@pytest.fixture
def server() -> Iterator[BackgroundServer]:
    limits = ServerLimits(header_timeout=0.3, body_timeout=0.3, max_header_bytes=8 * 1024, max_connections=3)
    with BackgroundServer(APP, limits=limits) as running:
        yield running


def connect(server: BackgroundServer) -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=UPPER_BOUND)
    sock.settimeout(UPPER_BOUND)
    return sock


def until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a timeout fails the test)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def one_response(sock: socket.socket) -> bytes:
    """One response on a connection that stays open: the head, then content-length bytes."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_a_half_sent_head_and_a_silent_connection_are_closed_with_408(server: BackgroundServer) -> None:
    with closing(connect(server)) as half, closing(connect(server)) as silent:
        started = time.monotonic()
        half.sendall(b"POST /read HTTP/1.1\r\nHost: receiver\r\nContent-Le")
        half_answer = until_closed(half)
        silent_answer = until_closed(silent)
        elapsed = time.monotonic() - started
    assert half_answer.startswith(b"HTTP/1.1 408 ")
    assert silent_answer.startswith(b"HTTP/1.1 408 ")
    assert elapsed < UPPER_BOUND


def test_a_slow_head_after_a_kept_alive_response_is_closed_too(server: BackgroundServer) -> None:
    with closing(connect(server)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: receiver\r\n\r\n")
        first = one_response(sock)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        second = until_closed(sock)
    assert first.startswith(b"HTTP/1.1 200 ")
    assert second.startswith(b"HTTP/1.1 408 ")


def test_a_slow_body_gets_408(server: BackgroundServer) -> None:
    with closing(connect(server)) as sock:
        sock.sendall(b"POST /read HTTP/1.1\r\nHost: receiver\r\nContent-Length: 100\r\n\r\n0123456789")
        answer = until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_a_body_answered_before_it_was_read_does_not_count_as_the_next_head(server: BackgroundServer) -> None:
    body = b"x" * 64 * 1024  # eight times the head limit, sent after the answer came
    with closing(connect(server)) as sock:
        sock.sendall(b"POST /early HTTP/1.1\r\nHost: receiver\r\nContent-Length: %d\r\n\r\n" % len(body))
        first = one_response(sock)
        sock.sendall(body + b"GET /healthz HTTP/1.1\r\nHost: receiver\r\n\r\n")
        second = one_response(sock)
    assert first.startswith(b"HTTP/1.1 401 ")
    assert second.startswith(b"HTTP/1.1 200 ")


def test_an_oversized_head_gets_431_without_being_read(server: BackgroundServer) -> None:
    with closing(connect(server)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: receiver\r\nX-Big: " + b"a" * 64 * 1024)
        answer = until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431 ")

    # 32 MiB is more than the socket buffers hold: a server that kept reading would take it all.
    with closing(connect(server)) as sock, pytest.raises(ConnectionError):
        send_a_32_mib_head(sock)


def send_a_32_mib_head(sock: socket.socket) -> None:
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: receiver\r\nX-Big: ")
    block = b"a" * 1024 * 1024
    for _ in range(32):
        sock.sendall(block)


def test_beyond_the_connection_limit_requests_get_503_until_one_closes(server: BackgroundServer) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: receiver\r\n\r\n"
    with closing(connect(server)) as first, closing(connect(server)) as second:
        first.sendall(request)
        second.sendall(request)
        answers = [one_response(first), one_response(second)]
        with closing(connect(server)) as third:  # three connections: the limit of 3 is reached
            third.sendall(request)
            refused = until_closed(third)
    assert [a.split(b"\r\n", 1)[0] for a in answers] == [b"HTTP/1.1 200 OK"] * 2
    assert refused.startswith(b"HTTP/1.1 503 ")

    def served() -> bytes | None:
        with closing(connect(server)) as sock:
            sock.sendall(request)
            answer = one_response(sock)
        return answer if answer.startswith(b"HTTP/1.1 200 ") else None

    assert wait_until(served)  # once the server has seen the two close, requests are served again
