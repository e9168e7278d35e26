"""The seam between the SQL store and a database driver: connections and transactions, nothing about jobs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

from receiver.store.queries import Dialect

T = TypeVar("T")

Row = dict[str, Any]


class Transaction(Protocol):
    """Statements inside one transaction. Parameters are Python values (str, int, None, datetime, and
    dict or list for JSON); the connector stores them in its database's types."""

    async def execute(self, sql: str, params: dict[str, Any]) -> int:
        """Run a statement; how many rows it changed."""

    async def fetch(self, sql: str, params: dict[str, Any]) -> list[Row]: ...

    async def send(self, sql: str, params: dict[str, Any]) -> None:
        """Run a statement whose outcome the work does not read. PostgreSQL sends it with the statements
        after it, and the commit, in one round trip; should it fail, the next statement that waits for
        its answer, or the commit, raises, and the transaction is rolled back as for any failure."""


Work = Callable[[Transaction], Coroutine[Any, Any, T]]
Sleep = Callable[[float], Awaitable[None]]


class StoreUnavailable(Exception):
    """The database cannot be reached right now (a restart, a network cut): worth trying again later.
    The message names the driver's error class only, never the URL."""


class Connector(Protocol):
    dialect: Dialect
    notifies: bool  # the database passes notices between processes (`listen`)
    in_process: bool  # statements run in this process: one more costs microseconds, not a round trip

    async def open(self) -> None:
        """Connect; a database that cannot be used is a one-line SettingsError."""

    async def close(self) -> None: ...

    async def run(self, work: Work[T], *, write: bool = True, single: bool = False) -> T:
        """Run `work` in one transaction: committed when it returns, rolled back when it raises. The
        connector may run it again from the start (SQLite does when another process holds the lock).
        `single`: `work` runs one statement, which is a transaction by itself; PostgreSQL sends it
        without BEGIN and COMMIT (two round trips fewer)."""

    async def run_grouped(self, work: Work[T]) -> T:
        """Run `work`, whose statements each have the same effect when applied twice, committed when
        this returns. SQLite runs the calls made at the same moment in one transaction (group commit;
        when it fails, every call in it raises StoreUnavailable); PostgreSQL runs each statement on
        its own, one round trip, and may run the work again when its connection was lost."""

    async def listen(
        self, statement: str, notice: Callable[[str], None], live: Callable[[bool], None], sleep: Sleep
    ) -> None:
        """Until cancelled: run `statement` (a LISTEN) on a connection of its own, then hand each notice's
        payload to `notice`. `live(True)` once listening, `live(False)` when the connection is lost; then
        connect again, at once and after that with backoff on `sleep`. Returns at once if not `notifies`."""
