"""Failover: which providers a job may go to, in which order, and which refusals send it to the next.

Both providers sell the same model, so a submit refused for a reason the other provider may not share
(credits, an account limit, an outage where nothing was made, a rate limit that lasts) goes on, under
the same job id. Never two paid runs for one job: a submit whose answer was lost may have made a job,
so it never fails over (it is resolved where it was sent).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from receiver.config import Settings, SettingsError
from receiver.providers import registry
from receiver.providers.base import (
    Forbidden,
    InsufficientCredits,
    NotSent,
    ProviderError,
    ProviderUnavailable,
    answer_lost,
)
from receiver.providers.registry import UnknownProvider

AUTO = "auto"
Choice = str | list[str]

__all__ = ["AUTO", "Choice", "may_fail_over", "parse_choice", "providers_of"]


def parse_choice(value: Any, default: str | None = None) -> Choice:
    """A submit's `provider`: a name, "auto", a list of names, or a comma-separated string of them
    (`default`, the RECEIVER_PROVIDER setting, when None). Raises UnknownProvider naming the problem."""
    if value is None:
        value = default
    if value is None:
        raise UnknownProvider(f"required: one of {', '.join(registry.NAMES)}, {AUTO}, or a list of names")
    if isinstance(value, str) and value.strip() == AUTO:
        return AUTO
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise UnknownProvider("a provider name, auto, or a list of provider names")
    chosen = list(dict.fromkeys(registry.get(name.strip()).name for name in names if name.strip()))
    if not chosen:
        raise UnknownProvider(f"names no provider: expected one of {', '.join(registry.NAMES)}")
    return chosen[0] if len(chosen) == 1 else chosen


def providers_of(choice: Choice, settings: Settings) -> list[str]:
    """The providers a job may go to, in order. One named provider is used as named (a missing key is
    the caller's SettingsError); from "auto" (RECEIVER_PROVIDER_ORDER) or a list, only those with an
    API key, and SettingsError when none has one."""
    if isinstance(choice, str) and choice != AUTO:
        return [choice]
    names: Sequence[str] = settings.provider_order if choice == AUTO else choice
    usable = [name for name in names if registry.get(name).api_key(settings)]
    if not usable:
        keys = ", ".join(f"{name.upper()}_API_KEY" for name in names)
        raise SettingsError(f"no provider to choose from: none of {keys} is set")
    return usable


def may_fail_over(exc: ProviderError) -> bool:
    """A refusal another provider may not share, after which this one certainly made nothing: 402
    (credits), 403 (this account's spend limit or IP list), a request that never arrived, or a 5xx
    answer. Not a lost answer, nor 400 (the prompt would be refused everywhere) or 401 (our key is
    configuration); 429 goes on only once it outlasts RECEIVER_FAILOVER_WAIT (see Receiver)."""
    if answer_lost(exc):
        return False
    if isinstance(exc, InsufficientCredits | Forbidden | NotSent):
        return True
    return isinstance(exc, ProviderUnavailable) and (exc.status_code or 0) >= 500
