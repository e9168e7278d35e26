"""Fixtures for tests over real HTTP on loopback: a server for any ASGI app, an inbox, the job store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.background import BackgroundServer
from receiver.store import Store, open_store
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
    yield from _store(request, f"sqlite:///{tmp_path / 'receiver.db'}")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store URL for an empty database; the SQLite file sits in a folder the store must create."""
    yield from _store(request, f"sqlite:///{tmp_path}/data/jobs.db")


def _store(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[str]:
    """`sqlite_url`, or a fresh PostgreSQL schema's URL, by the fixture's parameter."""
    if request.param == "sqlite":
        yield sqlite_url
        return
    with fresh_schema() as url:
        yield url


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """An opened store on `database_url`, closed after the test."""
    store = open_store(database_url)
    await store.open()
    yield store
    await store.close()
