"""Provider clients: Apiframe (webhooks) and Runbase (polling only), and the registry that names them."""

from __future__ import annotations

from typing import Any

import httpx

from receiver.providers.apiframe import ApiframeClient
from receiver.providers.base import ProviderClient
from receiver.providers.ratelimit import LocalBudget, RateBudget, StoreBudget
from receiver.providers.registry import NAMES, REGISTRY, Provider, UnknownProvider, get
from receiver.providers.runbase import RunbaseClient

__all__ = [
    "NAMES",
    "REGISTRY",
    "ApiframeClient",
    "LocalBudget",
    "Provider",
    "RateBudget",
    "RunbaseClient",
    "StoreBudget",
    "UnknownProvider",
    "get",
    "make_client",
]


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
    provider = get(name)
    return provider.client_class(
        api_key, base_url or provider.default_base_url, budget=budget, transport=transport, **options
    )
