"""Job stores: pick one by URL."""

from __future__ import annotations

from receiver.config import SettingsError
from receiver.store.base import (
    Admission,
    DueBudget,
    DueDelivery,
    HandlerRoute,
    JobCost,
    Matcher,
    OverBudget,
    Progressed,
    Recorded,
    SpendLimit,
    Store,
    Update,
)
from receiver.store.connector import StoreUnavailable
from receiver.store.sqlstore import SQLStore

__all__ = [
    "Admission",
    "DueBudget",
    "DueDelivery",
    "HandlerRoute",
    "JobCost",
    "Matcher",
    "OverBudget",
    "Progressed",
    "Recorded",
    "SQLStore",
    "SpendLimit",
    "Store",
    "StoreUnavailable",
    "Update",
    "open_store",
]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_store(url: str, *, timeout: float = 5.0, pool_size: int = 10) -> Store:
    """A store for `sqlite:///path.db` or `postgresql://...` (not yet connected: `await store.open()`).

    `timeout`: seconds a PostgreSQL call waits for a pooled connection before it fails; `pool_size`:
    the most connections one process opens to PostgreSQL.
    """
    if url.startswith("sqlite:///") or url == "sqlite://":
        from receiver.store.sqlite import SQLiteConnector

        return SQLStore(SQLiteConnector.from_url(url))
    if url.startswith(POSTGRES_SCHEMES):
        try:
            from receiver.store.postgres import PostgresConnector
        except ModuleNotFoundError as exc:
            if exc.name not in ("psycopg", "psycopg_pool"):
                raise
            raise SettingsError(
                "RECEIVER_DATABASE_URL: postgresql:// needs psycopg (pip install 'kling-receiver[postgres]')"
            ) from None
        return SQLStore(PostgresConnector.from_url(url, timeout=timeout, pool_size=pool_size))
    scheme = url.split(":", 1)[0] if ":" in url else url
    raise SettingsError(
        f"RECEIVER_DATABASE_URL: unsupported store scheme {scheme!r} (use sqlite:///path.db or postgresql://...)"
    )
