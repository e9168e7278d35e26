"""structlog set up once: JSON lines off a terminal, readable on one; secrets masked everywhere."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO, cast

import structlog

_MASK = "***"
_HOOK_TOKEN = re.compile(r"(/hooks/[A-Za-z0-9_-]+/)[^/\s\"'?#]+")
_secrets: set[str] = set()


def register_secrets(values: Iterable[str | None]) -> None:
    """Values (keys, secrets, tokens) that are masked wherever they appear in a log line."""
    _secrets.update(v for v in values if v and len(v) >= 4)


def mask(text: str) -> str:
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, _MASK)
    return _HOOK_TOKEN.sub(r"\1" + _MASK, text)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    if isinstance(value, BaseException):
        return mask(f"{type(value).__name__}: {value}")
    return value


def scrub_secrets(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event_dict.items()):
        event_dict[key] = _scrub(value)
    return event_dict


class _Stderr:
    """Whatever `sys.stderr` is at the moment of writing: while `submit --wait` shows its progress bar,
    rich puts a proxy there that prints above the bar, so a log line never breaks into it."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class _StdlibLines(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler `configure` installs, told apart from handlers it did not install."""


def configure(level: str = "info", *, json: bool | None = None) -> None:
    """Call once at start-up. `json=None` picks JSON unless stderr is a terminal.

    The standard library's loggers (uvicorn's, psycopg's pool, any library's) go the same way: one
    line each, in the same format, with the same masking, instead of their own plain text; unless the
    root logger already has a handler of someone else's, which then keeps them."""
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    threshold = logging.getLevelNamesMapping()[level.upper()]
    stamped: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *stamped,
            structlog.processors.format_exc_info,
            scrub_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _Stderr())),
        cache_logger_on_first_use=False,
    )
    handler = _StdlibLines(cast(TextIO, _Stderr()))
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *stamped],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                scrub_secrets,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    if any(not isinstance(h, _StdlibLines) for h in root.handlers):
        return  # the host owns the standard library's logging (Lambda's runtime, an embedding app)
    for old in root.handlers[:]:
        root.removeHandler(old)  # configured again (tests do): one line per record, not two
    root.addHandler(handler)
    root.setLevel(threshold)
