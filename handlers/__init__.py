"""Pluggable sinks: the Handler protocol, its errors, and the registry that builds them from config."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

from receiver.clock import Clock, system_clock
from receiver.events import EVENT_TYPES
from receiver.providers.registry import NAMES as PROVIDERS

__all__ = [
    "BUILTIN",
    "ConfigError",
    "Handler",
    "HandlerSpec",
    "PermanentError",
    "RetryLater",
    "build_handlers",
    "load_handler_class",
]

BUDGET_EVENT = "budget"  # a provider's daily budget reached 80% or 100% (receiver.costs)
BUILTIN = {
    "log": "handlers.log:LogHandler",
    "forward": "handlers.forward:ForwardHandler",
    "slack": "handlers.slack:SlackHandler",
    "storage": "handlers.storage:StorageHandler",
    "database": "handlers.database:DatabaseHandler",
}
COMMON_KEYS = frozenset(
    {
        "name",
        "type",
        "events",
        "providers",
        "when",
        "after",
        "max_attempts",
        "retry_base",
        "retry_max",
        "timeout",
    }
)


class PermanentError(Exception):
    """Raised by a handler for a failure that retrying cannot fix: the delivery goes dead at once."""


class ConfigError(ValueError):
    """Invalid handler configuration; the message names the handler and the key."""


@runtime_checkable
class Handler(Protocol):
    async def handle(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """Deliver one event. Return an optional report (e.g. where files were stored) that
        handlers listed with `after = [this]` receive in `event["reports"][name]`."""


@dataclass
class HandlerSpec:
    """One `[[handlers]]` table: the built handler plus the routing and retry settings around it."""

    name: str
    type: str
    handler: Handler
    events: tuple[str, ...] = EVENT_TYPES
    providers: tuple[str, ...] = PROVIDERS
    when: dict[str, Any] = field(default_factory=dict)
    after: tuple[str, ...] = ()
    max_attempts: int = 8
    retry_base: float = 5.0
    retry_max: float = 3600.0
    timeout: float = 60.0

    def matches(self, event: dict[str, Any]) -> bool:
        if event["type"] == BUDGET_EVENT:  # only to handlers that ask for it; it names no job
            return BUDGET_EVENT in self.events and event["budget"]["provider"] in self.providers
        job = event["job"]
        if event["type"] not in self.events or job["provider"] not in self.providers:
            return False
        metadata = job.get("metadata") or {}
        for key, wanted in self.when.items():
            allowed = wanted if isinstance(wanted, list) else [wanted]
            if key not in metadata or metadata[key] not in allowed:
                return False
        return True


def load_handler_class(type_name: str) -> type[Any]:
    """A built-in name, an entry point in group `receiver.handlers`, or `package.module:Class`."""
    target = BUILTIN.get(type_name)
    if target is None:
        for ep in entry_points(group="receiver.handlers"):
            if ep.name == type_name:
                loaded = ep.load()
                if not isinstance(loaded, type):
                    raise ConfigError(f"entry point {type_name!r} is not a class")
                return loaded
        if ":" not in type_name:
            raise ConfigError(
                f"unknown handler type {type_name!r} (built in: {', '.join(BUILTIN)}; "
                "or an entry point in group receiver.handlers, or package.module:Class)"
            )
        target = type_name
        _search_current_directory()
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}") from None
    cls = getattr(module, attr, None)
    if not isinstance(cls, type):
        raise ConfigError(f"{target!r} names no class")
    return cls


def _search_current_directory() -> None:
    """`type = "myhooks:Discord"` finds myhooks.py in the folder `receiver` runs from, as `python -m`
    would; the folder goes last on the import path, so a file there never shadows an installed module."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.append(here)


def build_handlers(tables: list[dict[str, Any]], *, clock: Clock = system_clock) -> list[HandlerSpec]:
    """Build every configured handler; an invalid table raises ConfigError naming it and the key.
    A handler class that takes `clock` gets the receiver's (it is not a key a table may set)."""
    specs: list[HandlerSpec] = []
    seen: set[str] = set()
    for index, table in enumerate(tables):
        name = table.get("name")
        label = f"handler {name!r}" if isinstance(name, str) else f"handler #{index + 1}"
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{label}: key 'name' is required, a non-empty string")
        if name in seen:
            raise ConfigError(f"{label}: key 'name' is used by another handler")
        seen.add(name)
        type_name = table.get("type")
        if not isinstance(type_name, str) or not type_name:
            raise ConfigError(f"{label}: key 'type' is required, a non-empty string")
        try:
            cls = load_handler_class(type_name)
        except ConfigError as exc:
            raise ConfigError(f"{label}: key 'type': {exc}") from None
        options = {k: v for k, v in table.items() if k not in COMMON_KEYS}
        default_timeout = _class_timeout(cls)
        timeout = _number(label, table, "timeout", default_timeout or 60.0, minimum=0.001)
        if default_timeout is not None and "timeout" in table:
            options["timeout"] = timeout
        _check_options(label, cls, options)
        if "clock" in inspect.signature(cls).parameters:
            options["clock"] = clock
        try:
            handler = cls(**options)
        except ConfigError as exc:
            raise ConfigError(f"{label}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{label}: {exc}") from None
        specs.append(
            HandlerSpec(
                name=name,
                type=type_name,
                handler=handler,
                events=_choices(label, table, "events", (*EVENT_TYPES, BUDGET_EVENT), EVENT_TYPES),
                providers=_choices(label, table, "providers", PROVIDERS),
                when=_when(label, table),
                after=_names(label, table),
                max_attempts=int(_number(label, table, "max_attempts", 8, minimum=1)),
                retry_base=_number(label, table, "retry_base", 5.0, minimum=0),
                retry_max=_number(label, table, "retry_max", 3600.0, minimum=0),
                timeout=timeout,
            )
        )
    names = {spec.name for spec in specs}
    for spec in specs:
        for other in spec.after:
            if other not in names:
                raise ConfigError(f"handler {spec.name!r}: key 'after' names unknown handler {other!r}")
            if other == spec.name:
                raise ConfigError(f"handler {spec.name!r}: key 'after' names the handler itself")
    _check_acyclic(specs)
    return specs


def _class_timeout(cls: type[Any]) -> float | None:
    """A handler whose class takes `timeout` (storage) gets the table's value too, and its own
    default replaces the dispatcher's 60 s: a long copy must not be cut at a limit it never chose."""
    param = inspect.signature(cls).parameters.get("timeout")
    if param is None:
        return None
    default = param.default
    if isinstance(default, int | float) and not isinstance(default, bool) and default > 0:
        return float(default)
    return 60.0


def _check_options(label: str, cls: type[Any], options: dict[str, Any]) -> None:
    params = inspect.signature(cls).parameters
    if "clock" in options:
        raise ConfigError(f"{label}: unknown key 'clock'")
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for key in options:
        if key not in params:
            raise ConfigError(f"{label}: unknown key {key!r}")
    for key, param in params.items():
        required = param.default is inspect.Parameter.empty and param.kind in (
            inspect.Parameter.KEYWORD_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        )
        if required and key not in options:
            raise ConfigError(f"{label}: key {key!r} is required")


def _choices(
    label: str,
    table: dict[str, Any],
    key: str,
    allowed: tuple[str, ...],
    default: tuple[str, ...] | None = None,
) -> tuple[str, ...]:
    value = table.get(key, list(allowed if default is None else default))
    if not isinstance(value, list) or not value or not all(v in allowed for v in value):
        raise ConfigError(f"{label}: key {key!r} must be a non-empty list from {list(allowed)}")
    return tuple(value)


def _when(label: str, table: dict[str, Any]) -> dict[str, Any]:
    value = table.get("when", {})
    if not isinstance(value, dict):
        raise ConfigError(f"{label}: key 'when' must be a table of metadata key = value(s)")
    return dict(value)


def _names(label: str, table: dict[str, Any]) -> tuple[str, ...]:
    value = table.get("after", [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{label}: key 'after' must be a list of handler names")
    return tuple(value)


def _number(label: str, table: dict[str, Any], key: str, default: float, *, minimum: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ConfigError(f"{label}: key {key!r} must be a number >= {minimum:g}")
    return float(value)


def _check_acyclic(specs: list[HandlerSpec]) -> None:
    after = {spec.name: spec.after for spec in specs}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise ConfigError(f"handler {name!r}: key 'after' makes a cycle ({' -> '.join(path)})")
        if name in done:
            return
        for other in after[name]:
            visit(other, (*path, name))
        done.add(name)

    for spec in specs:
        visit(spec.name, ())


class RetryLater(Exception):
    """Raised by a handler that was told when to come back (e.g. HTTP 429 with Retry-After)."""

    def __init__(self, delay: float, message: str = "") -> None:
        self.delay = delay
        super().__init__(message or f"retry in {delay:g}s")
