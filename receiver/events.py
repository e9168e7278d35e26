"""The job and the event: the one place their JSON shapes are defined."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"  # waiting for the provider's rate budget; the worker sends it
    # The submit was sent and its answer lost: whether the provider took it is being found out (Apiframe:
    # sent again with the same Idempotency-Key, which names the job it made or makes the only one).
    UNKNOWN = "unknown"
    SUBMITTED = "submitted"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    RETRYING = "retrying"
    DEAD = "dead"


EVENT_TYPES = ("job.succeeded", "job.failed")
MAX_OUTPUT_URLS = 20  # a job has one output or a few: a report with more is refused, not stored
MODEL = "kling-3.0"


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_iso(text: str | None) -> datetime | None:
    if text is None:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def new_job_id() -> str:
    return "job_" + secrets.token_hex(12)


def keyed_job_id(secret: str, idempotency_key: str) -> str:
    """The job id a client's Idempotency-Key stands for: the same key always names the same job, and
    without the secret no one can tell which key a job id came from."""
    digest = hmac.new(secret.encode(), b"job-idempotency-key:" + idempotency_key.encode(), hashlib.sha256)
    return "job_" + digest.hexdigest()[:24]


def valid_idempotency_key(key: str) -> bool:
    return 1 <= len(key) <= 255 and all(" " <= char <= "~" for char in key)


def new_event_id() -> str:
    return "evt_" + secrets.token_hex(12)


@dataclass(frozen=True)
class JobError:
    code: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> JobError | None:
        if not data:
            return None
        return cls(code=str(data.get("code", "")), message=str(data.get("message", "")))


@dataclass
class Delivery:
    handler: str
    status: DeliveryStatus
    attempts: int = 0
    last_error: str | None = None
    next_attempt_at: datetime | None = None
    report: dict[str, Any] | None = None
    # Each finished attempt: {"at", "status", "error", "next_attempt_at"}, oldest first (replays too).
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "handler": self.handler,
            "status": str(self.status),
            "attempts": self.attempts,
            "last_error": self.last_error,
        }


@dataclass
class Job:
    id: str
    provider: str
    status: JobStatus
    request: dict[str, Any]
    created_at: datetime
    metadata: dict[str, Any] = field(default_factory=dict)
    model: str = MODEL
    provider_job_id: str | None = None
    output_urls: list[str] = field(default_factory=list)
    error: JobError | None = None
    progress: int | None = None
    submitted_at: datetime | None = None
    completed_at: datetime | None = None
    completed_via: str | None = None
    deliveries: list[Delivery] = field(default_factory=list)
    event_id: str | None = None
    deadline_at: datetime | None = None
    poll_count: int = 0
    polled_at: datetime | None = None  # when the last status read was sent (the poll planner's history)
    next_poll_at: datetime | None = None  # when the worker looks next
    webhook_url: str | None = None  # as first sent: a resubmit must carry the same body
    refusals: int = 0  # submits the provider refused with 429, for the backoff
    # Each provider the submit went to: {"provider", "outcome", "answer", "at"} (see `attempt`).
    attempts: list[dict[str, Any]] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)  # providers still to try, in order
    cost: float | None = None  # as the provider last reported it, net of refunds, in its cost unit

    def cost_json(self) -> dict[str, Any] | None:
        """`{"amount", "unit", "source": "provider"}`: the provider's own figure (net of refunds) in its
        unit; None while no report has named one."""
        if self.cost is None:
            return None
        return {"amount": self.cost, "unit": cost_unit(self.provider), "source": "provider"}

    def to_json(self, *, deliveries: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "provider": self.provider,
            "provider_job_id": self.provider_job_id,
            "model": self.model,
            "status": str(self.status),
            "request": self.request,
            "metadata": self.metadata,
            "output_urls": list(self.output_urls),
            "error": self.error.to_json() if self.error else None,
            "progress": self.progress,
            "created_at": iso(self.created_at),
            "submitted_at": iso(self.submitted_at),
            "completed_at": iso(self.completed_at),
            "completed_via": self.completed_via,
            "attempts": [dict(a) for a in self.attempts],
            "cost": self.cost_json(),
        }
        if deliveries:
            data["deliveries"] = [d.to_json() for d in self.deliveries]
        return data


def cost_unit(provider: str) -> str | None:
    """The provider's cost unit (Apiframe credits, Runbase US dollars), from its registry entry."""
    from receiver.providers import registry  # the registry's providers import this module

    return registry.cost_unit(provider)


def attempt(provider: str, outcome: str, answer: str, at: datetime) -> dict[str, Any]:
    """One provider a submit went to, as the job JSON shows it. `outcome`: `accepted` (`answer` is the
    provider's job id), `refused`, `throttled` (429s or the rate budget beyond RECEIVER_FAILOVER_WAIT),
    `unknown` (sent, answer lost) or `not_sent` (a parameter it cannot take); `answer` says why."""
    return {"provider": provider, "outcome": outcome, "answer": answer, "at": iso(at)}


def event_type(status: JobStatus) -> str:
    return "job.succeeded" if status is JobStatus.SUCCEEDED else "job.failed"


def make_event(job: Job, event_id: str, *, now: datetime) -> dict[str, Any]:
    """The final event of a terminal job, created at its completion (`now` when it has none yet);
    built once, stored, and re-sent unchanged."""
    return {
        "id": event_id,
        "type": event_type(job.status),
        "created_at": iso(job.completed_at or now),
        "job": job.to_json(deliveries=False),
    }
