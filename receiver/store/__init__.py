"""Job stores: pick one by URL."""

from __future__ import annotations

from receiver.config import SettingsError
from receiver.store.base import DueDelivery, Matcher, Recorded, Route, Store, Update

__all__ = ["DueDelivery", "Matcher", "Recorded", "Route", "Store", "Update", "open_store"]


def open_store(url: str) -> Store:
    """A store for `sqlite:///path.db` (not yet connected: call `await store.open()`)."""
    if url.startswith("sqlite:///") or url == "sqlite://":
        from receiver.store.sqlite import SQLiteStore

        return SQLiteStore.from_url(url)
    scheme = url.split(":", 1)[0] if ":" in url else url
    raise SettingsError(f"RECEIVER_DATABASE_URL: unsupported store scheme {scheme!r} (use sqlite:///path.db)")
