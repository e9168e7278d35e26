"""The store's SQL files: every query the store names exists in both dialects with the same parameters."""

from __future__ import annotations

import inspect
import re

import pytest

from receiver.store import sqlstore
from receiver.store.queries import DIALECTS, blocks, load, params, to_driver


def _named_by_the_store() -> set[str]:
    return set(re.findall(r'_q\(\s*"(\w+)"', inspect.getsource(sqlstore)))


def test_both_dialects_have_the_same_queries_with_the_same_parameters() -> None:
    sqlite, postgres = load("sqlite"), load("postgres")
    assert sqlite.queries.keys() == postgres.queries.keys()
    for name, query in sqlite.queries.items():
        assert query.params == postgres.queries[name].params, name


def test_every_query_the_store_names_resolves_and_every_query_is_used() -> None:
    named = _named_by_the_store()
    for dialect in DIALECTS:
        assert named == load(dialect).queries.keys(), dialect


def test_both_dialects_migrate_to_the_same_version_without_parameters() -> None:
    versions = {dialect: load(dialect).schema_version for dialect in DIALECTS}
    assert versions == {"sqlite": 10, "postgres": 10}
    for dialect in DIALECTS:
        for statements in load(dialect).migrations.values():
            assert statements
            assert all(not params(s) for s in statements)


def test_an_unknown_or_missing_parameter_is_refused() -> None:
    queries = load("sqlite")
    with pytest.raises(ValueError, match="takes"):
        queries.bind("find_job", {"provider": "runbase", "provider_job_id": "rb_1", "extra": 1})
    with pytest.raises(ValueError, match="takes"):
        queries.bind("find_job", {"provider": "runbase"})
    with pytest.raises(KeyError):
        queries.bind("no_such_query", {})


def test_parameters_become_the_driver_style_and_casts_stay() -> None:
    sql = "SELECT :a::text, '50%', x FROM t WHERE y = :b_2"
    assert params(sql) == {"a", "b_2"}
    assert to_driver(sql, "sqlite") == sql
    assert to_driver(sql, "postgres") == "SELECT %(a)s::text, '50%%', x FROM t WHERE y = %(b_2)s"


def test_blocks_drop_comment_lines_and_refuse_a_name_twice() -> None:
    text = "-- header\n-- name: one\n-- why: a comment\nSELECT 1\n\n-- name: two\nSELECT :x\n"
    assert blocks(text) == {"one": "SELECT 1", "two": "SELECT :x"}
    with pytest.raises(ValueError, match="defined twice"):
        blocks("-- name: one\nSELECT 1\n-- name: one\nSELECT 2\n")


def test_a_migration_is_split_into_statements_at_line_ends() -> None:
    (trigger,) = [s for s in load("sqlite").migrations[2] if s.startswith("CREATE TRIGGER receiver_jobs_seq")]
    assert trigger.endswith("END")
