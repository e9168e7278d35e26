"""Runbase: Kling 3.0 over `POST /api/v1/runs`; no webhooks, no idempotency, a per-key rate limit."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import structlog

from receiver.clock import Clock, system_clock
from receiver.events import JobStatus
from receiver.generation import KlingRequest
from receiver.providers.base import (
    ProviderStatus,
    RateLimited,
    UnsupportedParameter,
    accepted,
    amount,
    report,
)
from receiver.providers.http import ErrorBody, Observer, ProviderHTTP, not_sent, transient
from receiver.providers.ratelimit import RateBudget

PROVIDER = "runbase"
COST_UNIT = "usd"  # `costUsd`
MODEL = "kling/kling-3.0"
DEFAULT_BASE_URL = "https://runbase.net"
RUNS_PATH = "/api/v1/runs"
MODES = {"standard": "std", "pro": "pro", "4k": "4K"}
# 429 codes: RATE_LIMITED passes within seconds; USAGE_EXCEEDED is a quota, not worth an immediate retry.
RETRYABLE_429 = (None, "RATE_LIMITED")

STATUSES = {
    "pending": JobStatus.SUBMITTED,
    "processing": JobStatus.RUNNING,
    "running": JobStatus.RUNNING,
    "succeeded": JobStatus.SUCCEEDED,
    "failed": JobStatus.FAILED,
    "canceled": JobStatus.CANCELED,
    "cancelled": JobStatus.CANCELED,
}

log = structlog.get_logger()


def check(request: KlingRequest) -> None:
    """Refuse what Runbase's Kling 3.0 input has no parameter for."""
    for name in ("negative_prompt", "multi_prompt"):
        if getattr(request, name) is not None:
            raise UnsupportedParameter(
                PROVIDER,
                name,
                f"{name} is not supported by {PROVIDER}: its Kling 3.0 input has no such field",
            )
    if request.generate_audio:
        raise UnsupportedParameter(
            PROVIDER,
            "generate_audio",
            f"generate_audio is not supported by {PROVIDER}: its Kling 3.0 input has no audio switch",
        )
    if request.end_image is not None and request.start_image is None:
        raise UnsupportedParameter(
            PROVIDER,
            "end_image",
            f"end_image is not supported by {PROVIDER} without start_image: "
            "image_urls takes the first frame, then an optional last frame",
        )


def build_body(request: KlingRequest) -> dict[str, Any]:
    """The run body: `{"model", "input"}` with only the keys the request sets."""
    data: dict[str, Any] = {"prompt": request.prompt, "mode": MODES[request.mode]}
    if request.aspect_ratio is not None:
        data["aspect_ratio"] = request.aspect_ratio
    if request.duration is not None:
        data["duration"] = request.duration
    if request.start_image is not None:
        data["image_urls"] = [request.start_image]
        if request.end_image is not None:
            data["image_urls"].append(request.end_image)
    return {"model": MODEL, "input": data}


def map_status(data: dict[str, Any]) -> ProviderStatus:
    """A run object (submit answer or `GET /api/v1/runs/{id}`) as a ProviderStatus."""
    return report(
        PROVIDER,
        "run",
        data,
        data.get("id"),
        STATUSES,
        lambda: output_urls(data.get("output")),
        lambda status: amount(data.get("costUsd")),  # paid at submit; no refund is documented
    )


def output_urls(output: Any) -> list[str]:
    urls = output.get("urls") if isinstance(output, dict) else None
    if not isinstance(urls, list):
        return []
    return list(dict.fromkeys(url for url in urls if isinstance(url, str) and url))


def parse_error(data: Any) -> ErrorBody:
    """`{"error": {"message", "code"}}`; a bare string error is tolerated too."""
    if not isinstance(data, dict):
        return ErrorBody(message=str(data)[:200] or "error without a message")
    error = data.get("error")
    code: Any = data.get("code")
    message: Any = error
    if isinstance(error, dict):
        message, code = error.get("message"), error.get("code", code)
    if not isinstance(message, str) or not message:
        message = data.get("message")
    return ErrorBody(
        message=message if isinstance(message, str) and message else "error without a message",
        code=code if isinstance(code, str) and code else None,
    )


class RunbaseClient:
    """Runbase's API. Every request, retries included, spends the key's budget first.

    A submit is repeated only when it provably never left: Runbase has no idempotency key, so a
    repeated submit that had arrived would buy a second video.
    """

    name: str = PROVIDER
    default_base_url = DEFAULT_BASE_URL

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        budget: RateBudget | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
        max_attempts: int = 4,
        wait_initial: float = 1.0,
        wait_max: float = 10.0,
        clock: Clock = system_clock,
        observe: Observer | None = None,
    ) -> None:
        self._transient = transient(max_retry_after=wait_max)
        self._http = ProviderHTTP(
            PROVIDER,
            base_url,
            api_key=api_key,
            auth_header="Authorization",
            auth_scheme="Bearer ",
            parse_error=parse_error,
            transport=transport,
            timeout=timeout,
            budget=budget,
            max_attempts=max_attempts,
            backoff_initial=wait_initial,
            backoff_max=wait_max,
            clock=clock,
            observe=observe,
        )

    @property
    def budget_key(self) -> str:
        """The key this client spends in its budget (a hash of the API key)."""
        return self._http.budget_key

    def check(self, request: KlingRequest) -> None:
        check(request)

    async def submit(
        self,
        job_id: str,
        request: KlingRequest,
        webhook_url: str | None = None,
        *,
        within: float | None = None,
    ) -> ProviderStatus:
        """Create a run; `webhook_url` is ignored (Runbase has no webhooks)."""
        check(request)
        body = build_body(request)

        async def call(attempt: int) -> dict[str, Any]:
            return await self._http.request("POST", RUNS_PATH, body=body, attempt=attempt, within=within)

        data = await self._http.retrying(call, on=not_sent)
        status = accepted(data, data.get("id"), lambda: map_status({"status": "pending", **data}))
        log.info(
            "provider_job_submitted", provider=PROVIDER, job_id=job_id, provider_job_id=status.provider_job_id
        )
        return status

    async def get_status(self, provider_job_id: str, *, within: float | None = None) -> ProviderStatus:
        path = f"{RUNS_PATH}/{quote(provider_job_id, safe='')}"

        async def call(attempt: int) -> dict[str, Any]:
            return await self._http.request(
                "GET", path, attempt=attempt, provider_job_id=provider_job_id, within=within
            )

        data = await self._http.retrying(call, on=self._on_read)
        return map_status({"id": provider_job_id, **data})

    def _on_read(self, exc: Exception) -> bool | float:
        if isinstance(exc, RateLimited) and exc.code not in RETRYABLE_429:
            return False
        return self._transient(exc)

    async def aclose(self) -> None:
        await self._http.aclose()
