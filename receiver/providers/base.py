"""What every provider client offers, and the typed errors they raise."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from receiver.events import TERMINAL, JobError, JobStatus
from receiver.generation import KlingRequest


@dataclass(frozen=True)
class ProviderStatus:
    """A provider's report on one job, mapped to the receiver's job statuses."""

    provider_job_id: str
    status: JobStatus
    progress: int | None = None
    output_urls: list[str] = field(default_factory=list)
    error: JobError | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    # What the job costs as the provider reports it now, in its unit (receiver.costs.UNITS): net of
    # any refund it documents; None when the report names no cost.
    cost: float | None = None
    # When the provider says the job ended (its `completedAt`), on its clock; None when it does not say.
    # The completion-time model learns from it: the moment a poll or a late webhook saw the end is
    # later, by as long as the receiver was not looking.
    finished_at: datetime | None = None


class ProviderError(Exception):
    """A provider refused or failed a request. Never carries a key or secret."""

    # Set by the retry loop: an earlier attempt of this request was sent and its answer lost, so this
    # answer (a 429 or a 5xx) does not tell what the provider did with that one.
    after_lost_answer: bool = False

    def __init__(
        self,
        provider: str,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        self.provider = provider
        self.message = message
        self.status_code = status_code
        self.code = code
        self.request_id = request_id
        super().__init__(self._describe())

    def _describe(self) -> str:
        parts = [f"{self.provider}"]
        if self.status_code is not None:
            parts.append(f"HTTP {self.status_code}")
        if self.code:
            parts.append(self.code)
        text = " ".join(parts) + f": {self.message}"
        if self.request_id:
            text += f" (request id {self.request_id})"
        return text

    def to_job_error(self) -> JobError:
        return JobError(code=self.code or type(self).__name__, message=str(self))


class UnsupportedParameter(ProviderError):
    """The request sets a parameter this provider cannot take; nothing was sent."""

    def __init__(self, provider: str, parameter: str, reason: str | None = None) -> None:
        self.parameter = parameter
        message = reason or f"{parameter} is not supported by {provider}"
        super().__init__(provider, message, code="unsupported_parameter")


class InvalidRequest(ProviderError):
    """400: the provider rejected the request body."""

    def __init__(self, *args: Any, details: Any = None, **kwargs: Any) -> None:
        self.details = details
        super().__init__(*args, **kwargs)


class AuthenticationError(ProviderError):
    """401: missing or invalid API key."""


class Forbidden(ProviderError):
    """403: the key may not do this (spend limit, IP allow-list, ...)."""


class InsufficientCredits(ProviderError):
    """402: the account cannot pay for the job."""

    def __init__(
        self,
        provider: str,
        message: str,
        *,
        credits_required: float | None = None,
        credits_available: float | None = None,
        **kwargs: Any,
    ) -> None:
        self.credits_required = credits_required
        self.credits_available = credits_available
        if credits_required is not None or credits_available is not None:
            message = (
                f"{message} (credits required {_figure(credits_required)}, "
                f"available {_figure(credits_available)})"
            )
        super().__init__(provider, message, **kwargs)


class NotFound(ProviderError):
    """404: the provider does not know this job."""


class Conflict(ProviderError):
    """409: the idempotency key was used before with another body."""


class RateLimited(ProviderError):
    """429: slow down; `retry_after` is the provider's wait in seconds when it gave one."""

    def __init__(self, *args: Any, retry_after: float | None = None, **kwargs: Any) -> None:
        self.retry_after = retry_after
        super().__init__(*args, **kwargs)


class ProviderUnavailable(ProviderError):
    """5xx or a network failure: worth retrying where the request is safe to repeat."""


class NotSent(ProviderUnavailable):
    """The connection was never made: the provider provably did not receive the request."""


class UnexpectedResponse(ProviderUnavailable):
    """The provider answered with a body this client cannot read (not JSON, missing field, new status)."""


def answer_lost(exc: ProviderError) -> bool:
    """The request was sent and no answer says what the provider did with it: a timeout or a broken
    connection after sending, an answer of 2xx that cannot be read, or a 429 or 5xx that followed one
    of those on a retry. A submit that ends so may have made a job."""
    if isinstance(exc, UnexpectedResponse):
        return True
    if isinstance(exc, ProviderUnavailable) and not isinstance(exc, NotSent) and exc.status_code is None:
        return True
    return exc.after_lost_answer and isinstance(exc, RateLimited | ProviderUnavailable)


class ReportRefused(Exception):
    """A webhook report refused outright (answered 400), not confirmed by a status read; the message
    starts with the field at fault."""


def percent(value: Any) -> int | None:
    """A provider's progress figure as a whole percentage in 0..100; None when there is none."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return max(0, min(100, int(value)))


def report(
    provider: str,
    noun: str,
    data: dict[str, Any],
    job_id: Any,
    statuses: Mapping[str, JobStatus],
    urls: Callable[[], list[str]],
    cost: Callable[[JobStatus], float | None] = lambda status: None,
) -> ProviderStatus:
    """A provider's job object as a ProviderStatus; `statuses` is matched without regard to case;
    `cost` reads the job's cost from `data` once its status is known."""
    if not isinstance(job_id, str) or not job_id:
        raise UnexpectedResponse(provider, f"{noun} object without an id")
    raw_status = data.get("status")
    status = statuses.get(raw_status.lower()) if isinstance(raw_status, str) else None
    if status is None:
        raise UnexpectedResponse(provider, f"{noun} {job_id} has an unknown status {raw_status!r}")
    succeeded = status is JobStatus.SUCCEEDED
    return ProviderStatus(
        provider_job_id=job_id,
        status=status,
        progress=100 if succeeded else percent(data.get("progress")),
        output_urls=urls() if succeeded else [],
        error=job_error(provider, status, data.get("error")),
        raw=data,
        cost=cost(status),
        finished_at=moment(data.get("completedAt")) if status in TERMINAL else None,
    )


def moment(value: Any) -> datetime | None:
    """A provider's timestamp (ISO 8601, `Z` or an offset; one without a zone is taken as UTC) as an
    aware datetime; None when there is none or it cannot be read: it only informs the model."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def accepted(data: dict[str, Any], job_id: Any, read: Callable[[], ProviderStatus]) -> ProviderStatus:
    """A submit's answer as a status. An answer that names the job but cannot be read otherwise (a
    status this client does not know) still says the job exists: it is `submitted` under that id and
    its polls tell the rest, rather than a job the receiver cannot name."""
    try:
        return read()
    except UnexpectedResponse:
        if not isinstance(job_id, str) or not job_id:
            raise
        return ProviderStatus(provider_job_id=job_id, status=JobStatus.SUBMITTED, raw=data)


def job_error(provider: str, status: JobStatus, error: Any) -> JobError | None:
    """The error of a failed or canceled job; `error` is a provider's string or `{"message", "code"}`."""
    if status not in (JobStatus.FAILED, JobStatus.CANCELED):
        return None
    code = None
    if isinstance(error, dict):
        code, error = error.get("code"), error.get("message")
    message = error if isinstance(error, str) and error else None
    if status is JobStatus.CANCELED:
        return JobError(code="canceled", message=message or f"the job was canceled at {provider}")
    text = message or f"{provider} reported the job failed without a message"
    if isinstance(code, str) and code:
        text = f"{text} ({code})"
    return JobError(code="provider_failed", message=text)


def amount(value: Any) -> float | None:
    """A provider's cost figure: a finite number >= 0, else None (not a cost to record)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value) if value >= 0 else None


def _figure(value: float | None) -> str:
    if value is None:
        return "unknown"
    return f"{value:g}"


class ProviderClient(Protocol):
    """One provider's API: submit a job and read its status."""

    name: str

    def check(self, request: KlingRequest) -> None:
        """Raise UnsupportedParameter for a parameter this provider cannot take."""

    async def submit(
        self,
        job_id: str,
        request: KlingRequest,
        webhook_url: str | None = None,
        *,
        within: float | None = None,
    ) -> ProviderStatus:
        """Create the job; `job_id` is the local id (Apiframe derives its Idempotency-Key from it). With
        `within`, raise ratelimit.BudgetBusy rather than wait longer than that for the rate budget."""

    async def get_status(self, provider_job_id: str, *, within: float | None = None) -> ProviderStatus:
        """Read the job's current status; `within` as for `submit`."""

    async def aclose(self) -> None:
        """Release connections."""
