"""Apiframe: Kling 3.0 over `POST /v2/videos/generate`, with webhooks and idempotency keys."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import structlog

from receiver.clock import Clock, system_clock
from receiver.events import MAX_OUTPUT_URLS, JobStatus
from receiver.generation import KlingRequest
from receiver.providers.base import (
    ProviderError,
    ProviderStatus,
    ReportRefused,
    UnexpectedResponse,
    UnsupportedParameter,
    accepted,
    amount,
    report,
)
from receiver.providers.http import ErrorBody, Observer, ProviderHTTP, number, transient
from receiver.providers.ratelimit import RateBudget

if TYPE_CHECKING:
    from receiver.config import Settings

PROVIDER = "apiframe"
COST_UNIT = "credits"  # `creditCost`
MODEL = "kling-3.0"
DEFAULT_BASE_URL = "https://api.apiframe.ai"
SUBMIT_PATH = "/v2/videos/generate"
WEBHOOK_FIELDS = ("webhookUrl", "webhook_url")  # v2 OpenAPI file, seed page
SIGNATURE_HEADER = "x-webhook-signature"
SIGNATURE_PREFIX = "sha256="
MAX_IDEMPOTENCY_KEY = 255
IDEMPOTENCY_PREFIX = "kling-receiver:"
OPTIONAL_PARAMS = ("start_image", "end_image", "negative_prompt", "multi_prompt")
# Capabilities on the page with no documented parameter: refused rather than silently dropped.
NO_PARAMETER = ("aspect_ratio", "duration")

STATUSES = {
    "queued": JobStatus.SUBMITTED,
    "processing": JobStatus.RUNNING,
    "completed": JobStatus.SUCCEEDED,
    "failed": JobStatus.FAILED,
    "cancelled": JobStatus.CANCELED,
    "canceled": JobStatus.CANCELED,
}
WEBHOOK_EVENTS = {"completed": "COMPLETED", "failed": "FAILED", "progress": "PROCESSING"}

_SAFE_KEY = re.compile(r"[A-Za-z0-9_.:-]+")

log = structlog.get_logger()


def check(request: KlingRequest) -> None:
    """Refuse what Apiframe has no parameter for."""
    for name in NO_PARAMETER:
        if getattr(request, name) is not None:
            raise UnsupportedParameter(
                PROVIDER,
                name,
                f"{name} is not supported by {PROVIDER}: its Kling 3.0 API documents no parameter for it",
            )


def build_body(
    request: KlingRequest, webhook_url: str | None, webhook_field: str = "webhookUrl"
) -> dict[str, Any]:
    """The submit body: only documented fields, optional klingParams only when set."""
    params: dict[str, Any] = {"mode": request.mode, "generate_audio": request.generate_audio}
    for name in OPTIONAL_PARAMS:
        value = getattr(request, name)
        if value is not None:
            params[name] = value
    body: dict[str, Any] = {"prompt": request.prompt, "model": MODEL, "klingParams": params}
    if webhook_url is not None:
        body[webhook_field] = webhook_url
    return body


def idempotency_key(job_id: str) -> str:
    """The `Idempotency-Key` for a local job: the same job always buys one video."""
    key = IDEMPOTENCY_PREFIX + job_id
    if len(key) <= MAX_IDEMPOTENCY_KEY and _SAFE_KEY.fullmatch(job_id):
        return key
    return IDEMPOTENCY_PREFIX + "sha256:" + hashlib.sha256(job_id.encode()).hexdigest()


def result_urls(result: Any) -> list[str]:
    """Output URLs from any of the `result` shapes seen: `{"videoUrl"}`, `{"videos": [...]}`, a URL."""
    found: list[Any] = [result]
    if isinstance(result, dict):
        found = [result.get("videoUrl")]
        videos = result.get("videos")
        if isinstance(videos, list):
            found.extend(videos)
    return list(dict.fromkeys(url for url in found if isinstance(url, str) and url))


def map_status(data: dict[str, Any]) -> ProviderStatus:
    """A job object from `GET /v2/jobs/{id}` (or the submit answer) as a ProviderStatus."""
    job_id = data.get("id") or data.get("jobId")
    return report(
        PROVIDER, "job", data, job_id, STATUSES, lambda: result_urls(data.get("result")), partial(cost, data)
    )


def cost(data: dict[str, Any], status: JobStatus) -> float | None:
    """`creditCost`, in credits. A FAILED job costs nothing: Apiframe refunds its credits (docs), and
    its webhook carries no `creditCost`."""
    if status is JobStatus.FAILED:
        return 0.0
    return amount(data.get("creditCost"))


def parse_webhook(body: dict[str, Any]) -> ProviderStatus:
    """A webhook delivery (completed, failed or progress) as a ProviderStatus."""
    if not isinstance(body, dict):
        raise UnexpectedResponse(PROVIDER, "webhook body is not a JSON object")
    data = dict(body)
    event = data.get("event")
    if "status" not in data and isinstance(event, str) and event in WEBHOOK_EVENTS:
        data["status"] = WEBHOOK_EVENTS[event]
    if not data.get("jobId"):
        raise UnexpectedResponse(PROVIDER, "webhook body without a jobId")
    return map_status({**data, "id": data["jobId"]})


def verify_signature(api_key: str, raw_body: bytes, header: str | None) -> bool:
    """`X-Webhook-Signature: sha256=<hex>`: HMAC-SHA256 of the raw body keyed with SHA-256(api key)."""
    if not header or not header.startswith(SIGNATURE_PREFIX):
        return False
    mac = _keyed(api_key).copy()
    mac.update(raw_body)
    expected = mac.hexdigest()
    given = header[len(SIGNATURE_PREFIX) :].strip().lower()
    return hmac.compare_digest(expected.encode(), given.encode(errors="replace"))


@lru_cache(maxsize=4)
def _keyed(api_key: str) -> hmac.HMAC:
    """The HMAC keyed with SHA-256 of the API key as sent (surrounding blanks dropped), made once per key:
    each webhook's copy costs 1.6 us, a new one (keying, OpenSSL's digest lookup) 2.5 to 3 us."""
    return hmac.new(hashlib.sha256(api_key.strip().encode()).digest(), digestmod=hashlib.sha256)


def signature_ok(settings: Settings, headers: Mapping[str, str], body: bytes) -> bool:
    """Checked when present (and required when the setting says so), on top of the URL token."""
    header = headers.get(SIGNATURE_HEADER)
    key = settings.apiframe_api_key
    if header is None or not key:
        return not settings.require_signature
    return verify_signature(key, body, header)


def read_webhook(data: dict[str, Any]) -> ProviderStatus | None:
    """The report as a status to act on, or None when it must be confirmed by a status read;
    ReportRefused for more output URLs than a job has."""
    result = data.get("result")
    videos = result.get("videos") if isinstance(result, dict) else None
    if isinstance(videos, list) and len(videos) > MAX_OUTPUT_URLS:
        raise ReportRefused(f"result.videos: {len(videos)} output URLs, more than {MAX_OUTPUT_URLS}")
    try:
        status = parse_webhook(data)
    except (ProviderError, ValueError, KeyError, TypeError):
        return None
    if status.status is JobStatus.SUCCEEDED and not status.output_urls:
        return None
    return status


def client_options(settings: Settings) -> dict[str, Any]:
    return {"webhook_field": settings.apiframe_webhook_field}


def parse_error(data: Any) -> ErrorBody:
    """`{"error": "..."}`, with `details` on 400 and the credit figures on 402."""
    if not isinstance(data, dict):
        return ErrorBody(message=str(data)[:200] or "error without a message")
    error = data.get("error")
    code = data.get("code")
    if isinstance(error, dict):
        code = error.get("code", code)
        error = error.get("message")
    message = error if isinstance(error, str) and error else data.get("message")
    return ErrorBody(
        message=message if isinstance(message, str) and message else "error without a message",
        code=code if isinstance(code, str) and code else None,
        details=data.get("details"),
        credits_required=number(data.get("creditsRequired")),
        credits_available=number(data.get("creditsAvailable")),
    )


class ApiframeClient:
    """Apiframe's API. Submits carry an `Idempotency-Key`, so they are retried like reads."""

    name: str = PROVIDER
    default_base_url = DEFAULT_BASE_URL

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        webhook_field: str = "webhookUrl",
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
        max_attempts: int = 4,
        budget: RateBudget | None = None,
        wait_initial: float = 0.5,
        wait_max: float = 10.0,
        max_retry_after: float = 60.0,
        clock: Clock = system_clock,
        observe: Observer | None = None,
    ) -> None:
        if webhook_field not in WEBHOOK_FIELDS:
            raise ValueError(f"webhook_field must be one of {', '.join(WEBHOOK_FIELDS)}")
        self.webhook_field = webhook_field
        self._on = transient(max_retry_after)
        self._http = ProviderHTTP(
            PROVIDER,
            base_url,
            api_key=api_key,
            auth_header="X-API-Key",
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
        check(request)
        body = build_body(request, webhook_url, self.webhook_field)
        headers = {"Idempotency-Key": idempotency_key(job_id)}

        async def call(attempt: int) -> dict[str, Any]:
            return await self._http.request(
                "POST", SUBMIT_PATH, body=body, headers=headers, attempt=attempt, within=within
            )

        data = await self._http.retrying(call, on=self._on)
        named = data.get("jobId") or data.get("id")
        status = accepted(data, named, lambda: map_status({"status": "QUEUED", **data}))
        log.info(
            "provider_job_submitted", provider=PROVIDER, job_id=job_id, provider_job_id=status.provider_job_id
        )
        return status

    async def get_status(self, provider_job_id: str, *, within: float | None = None) -> ProviderStatus:
        path = "/v2/jobs/" + quote(provider_job_id, safe="")

        async def call(attempt: int) -> dict[str, Any]:
            return await self._http.request(
                "GET", path, attempt=attempt, provider_job_id=provider_job_id, within=within
            )

        data = await self._http.retrying(call, on=self._on)
        return map_status({"id": provider_job_id, **data})

    async def aclose(self) -> None:
        await self._http.aclose()
