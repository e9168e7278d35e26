"""A webhook receiver on loopback that records every POST: the forward handler's and emulators' target."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.background import BackgroundServer


class Post(NamedTuple):
    headers: dict[str, str]
    body: bytes


@dataclass
class Inbox:
    """Records each POST in `posts`; answers the statuses queued in `answers`, then 200; while `hold`
    is given and not set, only once it is (a handler still at work)."""

    url: str = ""
    posts: list[Post] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    hold: threading.Event | None = None

    async def receive(self, request: Request) -> Response:
        post = Post(dict(request.headers), await request.body())
        with self.changed:
            self.posts.append(post)
            self.changed.notify_all()
        if self.hold is not None:
            await asyncio.to_thread(self.hold.wait, 60.0)
        return Response(status_code=self.answers.pop(0) if self.answers else 200)

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Post]:
        """The posts once there are at least `count`; `timeout` (real seconds) bounds a hang."""
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.posts) >= count, timeout):
                pytest.fail(f"{len(self.posts)} posts within {timeout} s, expected {count}")
            return list(self.posts)


@contextmanager
def running_inbox(hold: threading.Event | None = None) -> Iterator[Inbox]:
    """An Inbox served on loopback; it takes POSTs at `inbox.url` (answering each once `hold` is set,
    when given)."""
    inbox = Inbox(hold=hold)
    app = Starlette(routes=[Route("/in", inbox.receive, methods=["POST"])])
    with BackgroundServer(app) as server:
        inbox.url = server.url + "/in"
        yield inbox
