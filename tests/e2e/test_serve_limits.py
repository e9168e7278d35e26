"""`receiver serve` itself runs with the limits of receiver/serving.py (their timing is tested there)."""

from __future__ import annotations

import socket
from contextlib import closing
from urllib.parse import urlsplit

from conftest import World


def test_serve_refuses_a_head_over_16_kib_with_431(world: World) -> None:
    url = urlsplit(world.serve())
    with closing(socket.create_connection((url.hostname, url.port), timeout=10)) as sock:
        sock.settimeout(10)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: receiver\r\nX-Big: " + b"a" * 64 * 1024)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 431 ")
