"""Job stores: pick one by URL."""

from __future__ import annotations

from receiver.config import SettingsError
from receiver.store.base import DueDelivery, Matcher, Recorded, Route, Store, Update

__all__ = ["DueDelivery", "Matcher", "Recorded", "Route", "Store", "Update", "open_store"]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_store(url: str) -> Store:
    """A store for `sqlite:///path.db` or `postgresql://...` (not yet connected: `await store.open()`)."""
    if url.startswith("sqlite:///") or url == "sqlite://":
        from receiver.store.sqlite import SQLiteStore

        return SQLiteStore.from_url(url)
    if url.startswith(POSTGRES_SCHEMES):
        try:
            from receiver.store.postgres import PostgresStore
        except ModuleNotFoundError as exc:
            if exc.name not in ("psycopg", "psycopg_pool"):
                raise
            raise SettingsError(
                "RECEIVER_DATABASE_URL: postgresql:// needs psycopg (pip install 'kling-receiver[postgres]')"
            ) from None
        return PostgresStore.from_url(url)
    scheme = url.split(":", 1)[0] if ":" in url else url
    raise SettingsError(
        f"RECEIVER_DATABASE_URL: unsupported store scheme {scheme!r} (use sqlite:///path.db or postgresql://...)"
    )
