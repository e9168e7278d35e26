"""Every provider the receiver knows, in one table: the rest of the receiver asks here, by name."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx

from receiver import planner
from receiver.clock import Clock, system_clock
from receiver.completion import Lognormal
from receiver.providers import apiframe, runbase
from receiver.providers.base import ProviderClient, ProviderStatus
from receiver.providers.http import Observer
from receiver.providers.ratelimit import RateBudget

if TYPE_CHECKING:
    from receiver.config import Settings

__all__ = ["NAMES", "REGISTRY", "Provider", "UnknownProvider", "get"]


class UnknownProvider(ValueError):
    """A name that is not in the registry; the message lists the valid ones."""


def _no_options(settings: Settings) -> dict[str, Any]:
    return {}


def _unsigned(settings: Settings, headers: Mapping[str, str], body: bytes) -> bool:
    return True


def _confirm_by_poll(data: dict[str, Any]) -> ProviderStatus | None:
    return None


@dataclass(frozen=True)
class Provider:
    """What the receiver knows about one provider."""

    name: str
    sends_webhooks: bool
    default_base_url: str
    client_class: Callable[..., ProviderClient]
    api_key: Callable[[Settings], str | None]
    base_url: Callable[[Settings], str]
    poll_plan: planner.Plan
    cost_unit: str  # what its reported costs, and its daily budget, are counted in
    spends_budget: bool = False
    # The same submit sent twice makes one job (an idempotency key): a submit whose answer was lost
    # may be sent again.
    idempotent_submit: bool = False
    client_options: Callable[[Settings], dict[str, Any]] = _no_options
    verify_webhook: Callable[[Settings, Mapping[str, str], bytes], bool] = _unsigned
    read_webhook: Callable[[dict[str, Any]], ProviderStatus | None] = _confirm_by_poll

    def client(
        self,
        settings: Settings,
        *,
        budget: RateBudget | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock = system_clock,
        observe: Observer | None = None,
    ) -> ProviderClient:
        """The client built from settings; raises SettingsError when the API key is missing."""
        return self.client_class(
            settings.api_key(self.name),
            self.base_url(settings),
            budget=budget if self.spends_budget else None,
            transport=transport,
            clock=clock,
            observe=observe,
            **self.client_options(settings),
        )

    def next_poll_at(
        self, submitted_at: datetime, now: datetime, model: Lognormal, deadline: datetime | None = None
    ) -> datetime:
        """The look after one at `now`, planned on the job's completion model, never past `deadline`."""
        return planner.next_look_at(self.poll_plan, model, submitted_at, now, deadline)


REGISTRY: Mapping[str, Provider] = {
    apiframe.PROVIDER: Provider(
        name=apiframe.PROVIDER,
        sends_webhooks=True,
        default_base_url=apiframe.DEFAULT_BASE_URL,
        client_class=apiframe.ApiframeClient,
        api_key=lambda s: s.apiframe_api_key,
        base_url=lambda s: s.apiframe_base_url,
        poll_plan=planner.webhook_plan,
        cost_unit=apiframe.COST_UNIT,
        client_options=apiframe.client_options,
        verify_webhook=apiframe.signature_ok,
        read_webhook=apiframe.read_webhook,
        idempotent_submit=True,
    ),
    runbase.PROVIDER: Provider(
        name=runbase.PROVIDER,
        sends_webhooks=False,
        default_base_url=runbase.DEFAULT_BASE_URL,
        client_class=runbase.RunbaseClient,
        api_key=lambda s: s.runbase_api_key,
        base_url=lambda s: s.runbase_base_url,
        poll_plan=planner.polling_plan,
        cost_unit=runbase.COST_UNIT,
        spends_budget=True,
    ),
}
NAMES: tuple[str, ...] = tuple(REGISTRY)


def cost_unit(name: str) -> str | None:
    """The unit of a provider's costs; None for a name the registry does not know."""
    spec = REGISTRY.get(name)
    return spec.cost_unit if spec else None


def get(name: str) -> Provider:
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownProvider(f"unknown provider {name!r}: expected one of {', '.join(NAMES)}") from None
