"""HTTP plumbing shared by the provider clients: one session, typed errors, budgets and retries.

Retries are a loop written here rather than a library's: its waits go through the receiver's clock
(tests run them on a VirtualClock) and share the one backoff formula, `schedule.retry_delay`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import structlog

from receiver.clock import Clock, system_clock
from receiver.providers.base import (
    AuthenticationError,
    Conflict,
    Forbidden,
    InsufficientCredits,
    InvalidRequest,
    NotFound,
    NotSent,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    UnexpectedResponse,
    answer_lost,
)
from receiver.providers.ratelimit import RateBudget, budget_key
from receiver.schedule import parse_retry_after, retry_delay

T = TypeVar("T")
BackoffHook = Callable[[Exception], bool | float]
Observer = Callable[[int | None], None]

log = structlog.get_logger()

REDACTED = "[redacted]"
MAX_DETAILS = 500

_BY_STATUS: dict[int, type[ProviderError]] = {
    401: AuthenticationError,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
}

# The request never reached the provider: safe to repeat even where the provider has no idempotency.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class ErrorBody:
    """What a provider's error body says, read by that provider's own parser."""

    message: str
    code: str | None = None
    details: Any = None
    credits_required: float | None = None
    credits_available: float | None = None


ErrorParser = Callable[[Any], ErrorBody]


def number(value: Any) -> float | None:
    """A JSON number as float; None for anything else (bools included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def transient(max_retry_after: float) -> BackoffHook:
    """A retry hook: retry rate limits and outages, waiting `Retry-After` when one was given.

    An unreadable answer is not retried (it would read the same again), nor is a `Retry-After` longer
    than `max_retry_after`: the caller reschedules instead of holding a request open that long.
    """

    def hook(exc: Exception) -> bool | float:
        if isinstance(exc, UnexpectedResponse):
            return False
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            return exc.retry_after if exc.retry_after <= max_retry_after else False
        return isinstance(exc, RateLimited | ProviderUnavailable)

    return hook


def not_sent(exc: Exception) -> bool:
    """A retry hook for requests that must not repeat once sent (a submit without idempotency)."""
    return isinstance(exc, NotSent)


class ProviderHTTP:
    """One provider's HTTP session. Every answer is a JSON object or a typed ProviderError.

    The API key is a header only: it is scrubbed from every message this class builds.
    """

    def __init__(
        self,
        provider: str,
        base_url: str,
        *,
        api_key: str,
        auth_header: str,
        auth_scheme: str = "",
        parse_error: ErrorParser,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
        budget: RateBudget | None = None,
        max_attempts: int = 4,
        backoff_initial: float = 1.0,
        backoff_max: float = 10.0,
        clock: Clock = system_clock,
        observe: Observer | None = None,
    ) -> None:
        api_key = api_key.strip()
        if not api_key:
            raise ValueError(f"{provider}: an API key is required")
        # httpx would echo a bad header value (the key) in its error: refuse it here, without echoing.
        if not all("!" <= char <= "~" for char in api_key):
            raise ValueError(f"{provider}: the API key holds characters an HTTP header cannot carry")
        self.provider = provider
        self._api_key = api_key
        self._parse_error = parse_error
        self.budget = budget
        self.budget_key = budget_key(provider, api_key)
        self.max_attempts = max_attempts
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._clock = clock
        self._observe = observe
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={
                "Accept": "application/json",
                "User-Agent": "kling-receiver",
                auth_header: auth_scheme + api_key,
            },
            transport=transport,
            timeout=timeout,
        )

    async def retrying(self, call: Callable[[int], Awaitable[T]], *, on: BackoffHook) -> T:
        """Run `call(attempt)` until it returns, `on` declines its error, or the attempts run out.

        `on` answers True (retry after the backoff), a number (retry after that many seconds, a
        `Retry-After`) or False (raise now).
        """
        attempt = 1
        lost = False
        while True:
            try:
                return await call(attempt)
            except ProviderError as exc:
                exc.after_lost_answer = lost
                lost = answer_lost(exc)
                decision = on(exc)
                if decision is False or attempt >= self.max_attempts:
                    raise
                if decision is True:
                    wait = retry_delay(attempt, self.backoff_initial, self.backoff_max)
                else:
                    wait = float(decision)
                log.info(
                    "provider_retry_scheduled",
                    provider=self.provider,
                    attempt=attempt,
                    wait=round(wait, 3),
                    error=type(exc).__name__,
                )
                await self._clock.sleep(wait)
                attempt += 1

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        attempt: int = 1,
        provider_job_id: str | None = None,
        within: float | None = None,
    ) -> dict[str, Any]:
        """One HTTP request (inside the budget when there is one); the answer's JSON object. With
        `within`, ratelimit.BudgetBusy when the budget has no slot within that many seconds."""
        fields = {"provider": self.provider, "attempt": attempt, "provider_job_id": provider_job_id}
        slot = nullcontext() if self.budget is None else self.budget.slot(self.budget_key, within=within)
        try:
            async with slot:
                response = await self._client.request(method, path, json=body, headers=headers)
        except _NOT_SENT as exc:
            self._observed(None)
            log.warning("provider_not_reached", error=type(exc).__name__, **fields)
            raise NotSent(self.provider, self.redact(f"could not connect: {exc}")) from exc
        except httpx.TransportError as exc:
            self._observed(None)
            log.warning("provider_transport_failed", error=type(exc).__name__, **fields)
            raise ProviderUnavailable(self.provider, self.redact(f"{type(exc).__name__}: {exc}")) from exc
        self._observed(response.status_code)
        if response.is_success:
            return self._json_object(response)
        error = self.error_from(response)
        log.warning(
            "provider_refused",
            status_code=response.status_code,
            code=error.code,
            request_id=error.request_id,
            **fields,
        )
        if isinstance(error, RateLimited) and self.budget is not None:
            wait = error.retry_after
            if wait is None:
                wait = retry_delay(attempt, self.backoff_initial, self.backoff_max)
            await self.budget.penalize(self.budget_key, wait)
        raise error

    def _observed(self, status_code: int | None) -> None:
        if self._observe is not None:
            self._observe(status_code)

    def error_from(self, response: httpx.Response) -> ProviderError:
        """The typed error for a non-2xx answer, carrying the provider's message, code and request id."""
        status = response.status_code
        request_id = response.headers.get("x-request-id")
        try:
            data: Any = response.json()
        except ValueError:
            data = None
        if data is None:
            parsed = ErrorBody(message=f"HTTP {status} {response.reason_phrase} with a body that is not JSON")
        else:
            parsed = self._parse_error(data)
        message = self.redact(parsed.message)
        code = self.redact(parsed.code) if parsed.code else None
        common: dict[str, Any] = {"status_code": status, "code": code, "request_id": request_id}
        if status == 400:
            if parsed.details:
                message += f" (details: {self.redact(_compact(parsed.details))})"
            return InvalidRequest(self.provider, message, details=parsed.details, **common)
        if status == 402:
            return InsufficientCredits(
                self.provider,
                message,
                credits_required=parsed.credits_required,
                credits_available=parsed.credits_available,
                **common,
            )
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("retry-after"), self._clock())
            return RateLimited(self.provider, message, retry_after=retry_after, **common)
        if status >= 500:
            return ProviderUnavailable(self.provider, message, **common)
        return _BY_STATUS.get(status, ProviderError)(self.provider, message, **common)

    def redact(self, text: str) -> str:
        return text.replace(self._api_key, REDACTED)

    def _json_object(self, response: httpx.Response) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise UnexpectedResponse(
                self.provider,
                f"HTTP {response.status_code} answer is not a JSON object",
                status_code=response.status_code,
                request_id=response.headers.get("x-request-id"),
            )
        return data

    async def aclose(self) -> None:
        await self._client.aclose()


def _compact(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= MAX_DETAILS else text[: MAX_DETAILS - 3] + "..."
