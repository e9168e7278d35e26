"""Provider clients: Apiframe (webhooks) and Runbase (polling only)."""

from __future__ import annotations

from typing import Any

import httpx

from receiver.providers.apiframe import ApiframeClient
from receiver.providers.base import ProviderClient
from receiver.providers.ratelimit import LocalBudget, RateBudget
from receiver.providers.runbase import RunbaseClient

PROVIDERS = ("apiframe", "runbase")

__all__ = ["PROVIDERS", "ApiframeClient", "LocalBudget", "RateBudget", "RunbaseClient", "make_client"]


def make_client(
    name: str,
    *,
    api_key: str,
    base_url: str | None = None,
    budget: RateBudget | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    **options: Any,
) -> ProviderClient:
    """The client for provider `name`; `options` go to its constructor (timeout, max_attempts, ...)."""
    if name == "apiframe":
        return ApiframeClient(
            api_key,
            base_url or ApiframeClient.default_base_url,
            budget=budget,
            transport=transport,
            **options,
        )
    if name == "runbase":
        return RunbaseClient(
            api_key, base_url or RunbaseClient.default_base_url, budget=budget, transport=transport, **options
        )
    raise ValueError(f"unknown provider {name!r}: expected one of {', '.join(PROVIDERS)}")
