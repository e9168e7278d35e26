"""Fixtures for tests over real HTTP on loopback: a server for any ASGI app, an inbox, the job store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from receiver.background import BackgroundServer
from tests.support.inbox import Inbox, running_inbox
from tests.support.pg import fresh_schema
from tests.support.waiting import wait_until


@pytest.fixture
def sink() -> Iterator[Inbox]:
    with running_inbox() as inbox:
        yield inbox


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
    """`wait(predicate, timeout=20, clock=..., step=...)`: poll until truthy (see support.waiting)."""
    return wait_until


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """The receiver's job store, once on SQLite and once on a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'receiver.db'}"
        return
    with fresh_schema() as url:
        yield url
