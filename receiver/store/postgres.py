"""PostgreSQL for the SQL store: several replicas share it through a psycopg pool."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import suppress
from contextvars import ContextVar
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import psycopg
import structlog
from psycopg import AsyncConnection, AsyncPipeline
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from receiver import logs
from receiver.config import SettingsError
from receiver.schedule import retry_delay
from receiver.store.connector import Row, Sleep, StoreUnavailable, Work
from receiver.store.queries import Dialect

T = TypeVar("T")

Connection = AsyncConnection[DictRow]

log = structlog.get_logger()

POOL_MIN, POOL_SIZE = 1, 10  # RECEIVER_PG_POOL_SIZE sets the most connections (POOL_SIZE by default)
CONNECT_TIMEOUT = 10
STARTUP_WAIT_FIRST, STARTUP_WAIT_MAX = 0.1, 1.0  # seconds between connection attempts at open, doubling
NOT_ACCEPTING = (  # libpq's words when the server is not taking connections (its SQLSTATE is not kept)
    "Connection refused",
    "server closed the connection unexpectedly",
    "No such file or directory",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
)
RELISTEN_BASE, RELISTEN_MAX = 0.5, 30.0  # seconds between attempts to listen again, doubling
# A listen connection only reads: without keepalives a peer that vanished (no FIN) would go unnoticed.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


def _value(value: Any) -> Any:
    return Jsonb(value) if isinstance(value, dict | list) else value


class PostgresTransaction:
    """Statements on a connection; in a transaction, in pipeline mode (`pipeline`): each goes out when
    the work waits for an answer, together with those queued before it (BEGIN, `send`s)."""

    def __init__(self, conn: Connection, pipeline: AsyncPipeline | None = None) -> None:
        self._conn = conn
        self._pipeline = pipeline

    async def execute(self, sql: str, params: dict[str, Any]) -> int:
        cursor = await self._conn.execute(sql, {k: _value(v) for k, v in params.items()})
        if self._pipeline is not None:
            await self._pipeline.sync()  # its row count comes with its answer
        return cursor.rowcount

    async def fetch(self, sql: str, params: dict[str, Any]) -> list[Row]:
        cursor = await self._conn.execute(sql, {k: _value(v) for k, v in params.items()})
        return await cursor.fetchall()

    async def send(self, sql: str, params: dict[str, Any]) -> None:
        await self._conn.execute(sql, {k: _value(v) for k, v in params.items()})


class PostgresConnector:
    dialect: Dialect = "postgres"
    notifies = True
    in_process = False

    def __init__(self, url: str, *, timeout: float = 5.0, pool_size: int = POOL_SIZE) -> None:
        self.url = url
        self.timeout = timeout
        self.pool_size = pool_size
        self._pool: AsyncConnectionPool[Connection] | None = None

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 5.0, pool_size: int = POOL_SIZE) -> PostgresConnector:
        """Check the URL now (a mistake is a settings error at start-up); the password never shows."""
        logs.register_secrets(_passwords(url))
        try:
            conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise SettingsError(
                f"RECEIVER_DATABASE_URL: not a valid PostgreSQL URL ({_safe(url, exc)})"
            ) from None
        return cls(url, timeout=timeout, pool_size=pool_size)

    async def open(self) -> None:
        options = _connect_options(self.url)
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            self.url,
            connection_class=AsyncConnection[DictRow],
            # Autocommit: `run` opens its transaction itself; `run_grouped` sends a lone statement,
            # one round trip, where an implicit transaction would add BEGIN and COMMIT.
            kwargs={**options, "autocommit": True, "row_factory": dict_row},
            min_size=min(POOL_MIN, self.pool_size),
            max_size=self.pool_size,
            timeout=self.timeout,  # while the server is down a call fails after this, not 30 s
            open=False,
            name="receiver-store",
            # A connection is checked before it is lent: after a server restart every pooled one is
            # dead, and without the check each would fail one call. run_grouped lends unchecked.
            check=_check_unless_grouped,
        )
        try:
            await self._first_connection(options)
            await pool.open(wait=True, timeout=CONNECT_TIMEOUT)
        except BaseException as exc:
            await pool.close()  # also when cancelled: no pool workers outlive a failed open
            if isinstance(exc, psycopg.OperationalError | PoolTimeout):
                raise SettingsError(
                    f"RECEIVER_DATABASE_URL: cannot use PostgreSQL: {_safe(self.url, exc)}"
                ) from None
            raise
        self._pool = pool

    async def _first_connection(self, options: dict[str, Any]) -> None:
        """One plain connection before the pool: a refusal comes with the server's reason at once. A
        server that is not taking connections (down, starting or stopping: a restart) is tried again
        until `timeout`, as every call is: a process started during a restart waits for it instead of
        exiting as if its URL were wrong."""
        deadline = time.monotonic() + self.timeout
        wait = STARTUP_WAIT_FIRST
        while True:
            try:
                async with await AsyncConnection.connect(self.url, **options):
                    return
            except psycopg.OperationalError as exc:
                if not _not_accepting(exc) or time.monotonic() + wait > deadline:
                    raise
                # debug: a start that gives up prints one line, the error
                log.debug("store.waiting", error=_safe(self.url, exc), wait=wait)
            await asyncio.sleep(wait)
            wait = min(wait * 2, STARTUP_WAIT_MAX)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def listen(
        self, statement: str, notice: Callable[[str], None], live: Callable[[bool], None], sleep: Sleep
    ) -> None:
        given = conninfo_to_dict(self.url)
        keepalives = {k: v for k, v in KEEPALIVES.items() if k not in given}
        options = {**_connect_options(self.url), **keepalives, "autocommit": True}
        failures = 0
        while True:
            listening = False
            try:
                async with await AsyncConnection.connect(self.url, **options) as conn:
                    await conn.execute(statement, {})
                    if failures:
                        log.info("store.listen_restored", attempts=failures)
                    failures, listening = 0, True
                    live(True)
                    async for note in conn.notifies():
                        notice(note.payload)
            except Exception as exc:  # whatever ended it, the worker goes on without notices
                if failures == 0:  # once per outage, not once per attempt
                    log.warning("store.listen_lost", error=_safe(self.url, exc))
            if listening:
                live(False)
            failures += 1
            await sleep(0.0 if failures == 1 else retry_delay(failures - 1, RELISTEN_BASE, RELISTEN_MAX))

    async def run(self, work: Work[T], *, write: bool = True, single: bool = False) -> T:
        return await self._lend(work, transaction=not single)

    async def run_grouped(self, work: Work[T]) -> T:
        """Each statement of `work` commits on its own (the connection is in autocommit). The
        connection is lent without the pool's check, whose round trip doubled a record's; should it
        fail (a server restart since it was last used), the work runs once more on a checked one.
        Grouped work is a report, which applied twice has the effect of once."""
        lent = _GROUPED.set(True)
        try:
            return await self._lend(work, transaction=False)
        except StoreUnavailable:
            pass  # a connection dead since its last use: once more, on a checked one
        finally:
            _GROUPED.reset(lent)
        return await self._lend(work, transaction=False)

    async def _lend(self, work: Work[T], *, transaction: bool) -> T:
        """`work` on a connection of the pool, in a transaction or not; StoreUnavailable when the
        server cannot be reached or the pool has no connection in time."""
        if self._pool is None:
            raise RuntimeError("store is not open")
        try:
            async with self._pool.connection() as conn:
                if not transaction:
                    return await work(PostgresTransaction(conn))
                return await _pipelined(conn, work)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise StoreUnavailable(f"PostgreSQL is unavailable ({type(exc).__name__})") from exc


async def _pipelined(conn: Connection, work: Work[T]) -> T:
    """`work` in a transaction, in pipeline mode: BEGIN goes out with the first statement that waits
    for its answer, and COMMIT with the statements sent after the last one that did, so a transaction
    costs a round trip per answer it waits for, not one per statement. On any failure (the
    transaction's, or a cancellation) it is rolled back; a connection left unusable is not reused."""
    try:
        async with conn.pipeline() as pipeline:
            await conn.execute("BEGIN")
            result = await work(PostgresTransaction(conn, pipeline))
            await conn.execute("COMMIT")  # sent, with what is queued, as the pipeline ends
    except BaseException:
        if not conn.broken and conn.pgconn.transaction_status != TransactionStatus.IDLE:
            with suppress(psycopg.Error):
                await conn.rollback()
        raise
    return result


_GROUPED: ContextVar[bool] = ContextVar("grouped", default=False)  # a lend for run_grouped: unchecked


async def _check_unless_grouped(conn: Connection) -> None:
    """The pool's check before lending (an empty statement), except for run_grouped's lends."""
    if not _GROUPED.get():
        await AsyncConnectionPool.check_connection(conn)


def _connect_options(url: str) -> dict[str, Any]:
    given = conninfo_to_dict(url)
    options: dict[str, Any] = {"autocommit": False}
    if "connect_timeout" not in given:
        options["connect_timeout"] = CONNECT_TIMEOUT
    if "application_name" not in given:
        options["application_name"] = "kling-receiver"
    return options


def _passwords(url: str) -> list[str]:
    """The URL's password (in the authority or the query) as written and decoded: masked everywhere."""
    found: list[object] = []
    with suppress(ValueError):
        found.append(urlsplit(url).password)
    with suppress(psycopg.ProgrammingError):
        found.append(conninfo_to_dict(url).get("password"))
    return sorted(
        {v for p in found if isinstance(p, str) and p for v in (p, unquote(p))}, key=len, reverse=True
    )


def _not_accepting(exc: psycopg.OperationalError) -> bool:
    """The server is not taking connections now (refused, starting up, shutting down), unlike a
    refusal of what the URL says (password, database name), which no wait changes."""
    if exc.sqlstate in ("57P01", "57P03"):  # admin_shutdown, cannot_connect_now
        return True
    text = str(exc)
    return any(sign in text for sign in NOT_ACCEPTING)


def _safe(url: str, exc: BaseException) -> str:
    """The first line of a driver error, with the URL and its password masked."""
    text = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    for secret in sorted([url, *_passwords(url)], key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
