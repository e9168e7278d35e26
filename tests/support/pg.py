"""The local PostgreSQL for tests: a fresh schema per test, so tests never see each other's tables."""

from __future__ import annotations

import functools
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
SHOWN_URL = re.sub(r"://([^:/@]*):[^@]*@", r"://\1:***@", PG_URL)  # for messages: no password


@functools.cache
def _unreachable() -> str | None:
    """Why the server cannot be used, or None; asked once per test run."""
    try:
        psycopg.connect(PG_URL, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        return str(exc).strip().splitlines()[0]
    return None


def require_server() -> None:
    """Skip when the server is unreachable and CI is unset; under CI an unreachable server fails."""
    reason = _unreachable()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL at {SHOWN_URL} is unreachable under CI: {reason}")
    pytest.skip(f"PostgreSQL at {SHOWN_URL} is unreachable and CI is unset: {reason}")


def schema_url(schema: str) -> str:
    """PG_URL with `search_path` set to `schema` for every connection made from it."""
    return f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}"


@contextmanager
def fresh_schema() -> Iterator[str]:
    """A URL whose connections see only a new, empty schema; the schema is dropped afterwards."""
    require_server()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield schema_url(schema)
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
