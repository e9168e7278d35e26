"""The store's SQL: named blocks in sql/*.sql, one shared file plus one per dialect for what differs.

A block starts with `-- name: x`; its other full-line comments are for the reader. Parameters are written
`:name` and converted to each driver's style. `migration_n` blocks hold several statements, each ending
with `;` at the end of a line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

Dialect = Literal["sqlite", "postgres"]
DIALECTS: tuple[Dialect, ...] = ("sqlite", "postgres")

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)
_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
_STATEMENT_END = re.compile(r";[ \t]*$", re.MULTILINE)
_MIGRATION = re.compile(r"migration_(\d+)")


@dataclass(frozen=True)
class Query:
    name: str
    sql: str  # in the driver's parameter style
    params: frozenset[str]


@dataclass(frozen=True)
class Queries:
    dialect: Dialect
    queries: dict[str, Query]
    migrations: dict[int, tuple[str, ...]]  # version -> statements that bring the schema to it

    @property
    def schema_version(self) -> int:
        return max(self.migrations)

    def bind(self, name: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The statement and its parameters; a name or parameter the SQL does not know is a bug here."""
        query = self.queries[name]
        if query.params != params.keys():
            raise ValueError(f"query {name!r} takes {sorted(query.params)}, got {sorted(params)}")
        return query.sql, params


def blocks(text: str) -> dict[str, str]:
    """{name: SQL} of a file's named blocks, without comment lines."""
    parts = _NAME.split(text)
    found: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in found:
            raise ValueError(f"query {name!r} is defined twice")
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        found[name] = "\n".join(lines).strip()
    return found


def params(sql: str) -> frozenset[str]:
    return frozenset(_PARAM.findall(sql))


def to_driver(sql: str, dialect: Dialect) -> str:
    """sqlite3 takes `:name` as written; psycopg takes `%(name)s` (and a literal % doubled)."""
    if dialect == "sqlite":
        return sql
    return _PARAM.sub(r"%(\1)s", sql.replace("%", "%%"))


def source(dialect: Dialect) -> dict[str, str]:
    """The blocks a dialect runs: the shared ones and its own (which may not redefine a shared one)."""
    folder = resources.files("receiver.store") / "sql"
    shared = blocks((folder / "queries.sql").read_text(encoding="utf-8"))
    own = blocks((folder / f"{dialect}.sql").read_text(encoding="utf-8"))
    if clash := shared.keys() & own.keys():
        raise ValueError(f"{dialect}.sql redefines shared queries: {sorted(clash)}")
    return shared | own


def load(dialect: Dialect) -> Queries:
    queries: dict[str, Query] = {}
    migrations: dict[int, tuple[str, ...]] = {}
    for name, sql in source(dialect).items():
        if match := _MIGRATION.fullmatch(name):
            statements = (s.strip() for s in _STATEMENT_END.split(sql))
            migrations[int(match.group(1))] = tuple(s for s in statements if s)
            continue
        queries[name] = Query(name, to_driver(sql, dialect), params(sql))
    if sorted(migrations) != list(range(1, len(migrations) + 1)):
        raise ValueError(f"{dialect}.sql: migrations must be numbered 1..n, found {sorted(migrations)}")
    return Queries(dialect, queries, migrations)
