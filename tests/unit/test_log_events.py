"""Every structured log event the code can write is documented in README.md's "Log events" table, with
each field the call names: a new log call, or a new field on one, fails here until it is documented."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[2]
LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}
LOGGERS = {"log", "logger"}


def log_calls() -> dict[str, set[str]]:
    """Event name -> the keyword fields its calls pass by name (`**fields` is read by the reviewer)."""
    found: dict[str, set[str]] = {}
    for path in [*ROOT.glob("receiver/**/*.py"), *ROOT.glob("handlers/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LEVELS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in LOGGERS
            ):
                continue
            first = node.args[0] if node.args else None
            where = f"{path}:{node.lineno}: a log call's event name must be a literal string"
            assert isinstance(first, ast.Constant), where
            assert isinstance(first.value, str), where
            found.setdefault(first.value, set()).update(k.arg for k in node.keywords if k.arg)
    return found


def documented() -> dict[str, str]:
    """README's Log events table: event name -> its row."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Log events", 1)[1].split("\n#", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            rows[line.split("`", 2)[1]] = line
    return rows


def test_the_scan_finds_the_log_calls() -> None:
    calls = log_calls()
    assert calls["job.completed"] == {"job_id", "status", "via"}
    assert "delivery.dead" in calls


def test_every_log_event_and_its_fields_are_in_the_readme() -> None:
    rows = documented()
    for event, fields in log_calls().items():
        assert event in rows, f"log event {event!r} is not in README.md's Log events table"
        for name in fields:
            assert f"`{name}`" in rows[event], f"field {name!r} of {event!r} is not in its README row"


def test_the_readme_lists_no_event_the_code_does_not_write() -> None:
    assert set(documented()) <= set(log_calls())
