"""SQLite (WAL) for the SQL store: one file, no service; safe for several processes on one machine."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from receiver.config import SettingsError
from receiver.store.connector import Row, Sleep, StoreUnavailable, Work
from receiver.store.queries import Dialect

T = TypeVar("T")

BUSY_INLINE_MS = 20  # longest the event loop waits for another process's write lock
BUSY_PATIENT_MS = 30000


def ts(moment: datetime) -> str:
    """Fixed-width UTC text, so stored times compare correctly as strings."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _value(value: Any) -> Any:
    if isinstance(value, datetime):
        return ts(value)
    if isinstance(value, dict | list | tuple):
        return json.dumps(value)
    return value


def _row(cursor: sqlite3.Cursor, values: tuple[Any, ...]) -> Row:
    return {column[0]: value for column, value in zip(cursor.description, values, strict=True)}


def _why(exc: OSError | sqlite3.Error) -> str:
    """Why a file could not be opened, in words that name the cause (mkdir's "File exists" for a
    parent that is a file does not)."""
    if isinstance(exc, FileExistsError | NotADirectoryError):
        return f"{exc.filename} is a file, not a folder"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def _busy(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


class SQLiteTransaction:
    """Every call completes at once (no real await), so a transaction's work runs to its end inline."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: dict[str, Any]) -> int:
        return self._conn.execute(sql, {k: _value(v) for k, v in params.items()}).rowcount

    async def fetch(self, sql: str, params: dict[str, Any]) -> list[Row]:
        rows: list[Row] = self._conn.execute(sql, {k: _value(v) for k, v in params.items()}).fetchall()
        return rows

    async def send(self, sql: str, params: dict[str, Any]) -> None:
        self._conn.execute(sql, {k: _value(v) for k, v in params.items()})


def _complete(work: Coroutine[Any, Any, T]) -> T:
    """The result of work that never suspends (it awaits only SQLiteTransaction calls)."""
    try:
        work.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    work.close()
    raise RuntimeError("a SQLite transaction's work awaited something other than the database")


async def _all(works: list[Work[Any]], tx: SQLiteTransaction) -> list[Any]:
    """Several calls' work in one transaction, in order."""
    return [await work(tx) for work in works]


def _settle(group: list[tuple[Work[Any], asyncio.Future[Any]]], results: list[Any]) -> None:
    for (_, future), result in zip(group, results, strict=True):
        if not future.done():
            future.set_result(result)


def _fail(group: list[tuple[Work[Any], asyncio.Future[Any]]], exc: BaseException) -> None:
    """Every call of a failed group commit: nothing of it was committed."""
    for _, future in group:
        if not future.done():
            unavailable = StoreUnavailable(f"SQLite could not commit ({type(exc).__name__})")
            unavailable.__cause__ = exc
            future.set_exception(unavailable)


class SQLiteConnector:
    dialect: Dialect = "sqlite"
    notifies = False
    in_process = True

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._group: list[tuple[Work[Any], asyncio.Future[Any]]] = []
        self._waiting: set[asyncio.Future[Any]] = set()  # group commits waiting in a thread

    @classmethod
    def from_url(cls, url: str) -> SQLiteConnector:
        return cls(url.removeprefix("sqlite:///") or ":memory:")

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
        except (OSError, sqlite3.Error) as exc:
            raise SettingsError(
                f"RECEIVER_DATABASE_URL: cannot open the SQLite file {self.path}: {_why(exc)}"
            ) from None
        conn.row_factory = _row
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        # Each UPDATE inside a transaction keeps a statement journal to undo itself; in a temporary file
        # that doubled the cost of recording a webhook (24 us against 13 us a statement). The receiver's
        # temporary data is that journal and small sorts, so memory holds it.
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.execute(f"PRAGMA busy_timeout={BUSY_INLINE_MS}")
        self._conn = conn

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.to_thread(conn.close)

    async def listen(
        self, statement: str, notice: Callable[[str], None], live: Callable[[bool], None], sleep: Sleep
    ) -> None:
        """SQLite has no notices: nothing to listen to."""

    async def run(self, work: Work[T], *, write: bool = True, single: bool = False) -> T:
        """Statements here take microseconds, far less than a hop to a thread, so they run on the event
        loop; when another process holds the write lock longer than BUSY_INLINE_MS, or another call is
        in a thread, the work starts again in a thread instead."""
        if self._lock.acquire(blocking=False):
            try:
                return self._transaction(work, write)
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    raise
            finally:
                self._lock.release()
        return await asyncio.to_thread(self._patient, work, write)

    async def run_grouped(self, work: Work[T]) -> T:
        """Group commit: the calls made while the event loop runs one round of ready tasks (the
        webhooks that arrived together) wait for one transaction, run at the end of that round; each
        returns once it is committed. A failed transaction fails every call in it (StoreUnavailable,
        a 503 for a webhook: the provider sends it again), none of which was committed."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._group.append((work, future))
        if len(self._group) == 1:
            asyncio.get_running_loop().call_soon(self._commit_group)
        return await future

    def _commit_group(self) -> None:
        group, self._group = self._group, []
        work = partial(_all, [work for work, _ in group])
        if self._lock.acquire(blocking=False):
            try:
                _settle(group, self._transaction(work, True))
                return
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    _fail(group, exc)
                    return
            except Exception as exc:
                _fail(group, exc)
                return
            finally:
                self._lock.release()
        # Another process holds the write lock (or a call waits for it in a thread): wait there too.
        patient = asyncio.ensure_future(asyncio.to_thread(self._patient, work, True))
        self._waiting.add(patient)
        patient.add_done_callback(partial(self._patient_done, group))

    def _patient_done(
        self, group: list[tuple[Work[Any], asyncio.Future[Any]]], done: asyncio.Future[Any]
    ) -> None:
        self._waiting.discard(done)
        if done.cancelled():
            _fail(group, asyncio.CancelledError())
        elif (exc := done.exception()) is not None:
            _fail(group, exc)
        else:
            _settle(group, done.result())

    def _patient(self, work: Work[T], write: bool) -> T:
        with self._lock:
            conn = self._connection()
            conn.execute(f"PRAGMA busy_timeout={BUSY_PATIENT_MS}")
            try:
                return self._transaction(work, write)
            finally:
                conn.execute(f"PRAGMA busy_timeout={BUSY_INLINE_MS}")

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("store is not open")
        return self._conn

    def _transaction(self, work: Work[T], write: bool) -> T:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            result = _complete(work(SQLiteTransaction(conn)))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result
