"""Fixtures for tests over real HTTP on loopback: a server for any ASGI app, and a webhook sink."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from pg_server import fresh_schema
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.background import BackgroundServer


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02) -> Any:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(interval)


@dataclass
class Post:
    t: float
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Sink:
    """A webhook receiver that records every POST and answers the statuses queued in `answers`."""

    url: str = ""
    posts: list[Post] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Post]:
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.posts) >= count, timeout):
                pytest.fail(f"{len(self.posts)} webhook posts within {timeout} s, expected {count}")
            return list(self.posts)

    async def receive(self, request: Request) -> Response:
        post = Post(time.monotonic(), request.url.path, dict(request.headers), await request.body())
        with self.changed:
            self.posts.append(post)
            self.changed.notify_all()
        return Response(status_code=self.answers.pop(0) if self.answers else 200)


@pytest.fixture
def sink() -> Iterator[Sink]:
    recorder = Sink()
    app = Starlette(routes=[Route("/hook/{name}", recorder.receive, methods=["POST"])])
    with BackgroundServer(app) as server:
        recorder.url = server.url + "/hook/job"
        yield recorder


@pytest.fixture
def serve() -> Iterator[Callable[..., httpx.Client]]:
    """`serve(emulator.app, headers={...})`: run the app on loopback and get a client for it."""
    with ExitStack() as stack:

        def start(app: Any, headers: dict[str, str] | None = None) -> httpx.Client:
            server = stack.enter_context(BackgroundServer(app))
            return stack.enter_context(httpx.Client(base_url=server.url, headers=headers, timeout=10))

        yield start


@pytest.fixture
def wait() -> Callable[..., Any]:
    """`wait(predicate, timeout=5.0)`: poll until truthy, with a bounded deadline."""
    return wait_until


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """The receiver's job store, once on SQLite and once on a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'receiver.db'}"
        return
    with fresh_schema() as url:
        yield url
