"""What the dashboard shows beyond one job: a page of jobs, dead letters, budget and health figures."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from receiver.events import DeliveryStatus, Job


@dataclass(frozen=True)
class JobsPage:
    jobs: list[Job]
    page: int
    more: bool


@dataclass(frozen=True)
class DeadLetter:
    job_id: str
    handler: str
    attempts: int
    last_error: str | None


@dataclass(frozen=True)
class BudgetLetter:
    """A `budget` event gone dead: the level of a provider's daily budget reached on `day`."""

    provider: str
    day: str
    level: int
    handler: str
    attempts: int
    last_error: str | None
    event_id: str


@dataclass(frozen=True)
class HandlerRate:
    """A handler's deliveries among the listed jobs; `rate` is delivered over finished (None: none)."""

    name: str
    delivered: int
    retrying: int
    dead: int

    @property
    def rate(self) -> float | None:
        finished = self.delivered + self.dead
        return self.delivered / finished if finished else None


@dataclass(frozen=True)
class BudgetUse:
    """A provider's rate budget as this process spent it."""

    provider: str
    used: int  # requests within the budget's window
    limit: int
    window: float
    recent: int  # requests within the last five minutes


@dataclass(frozen=True)
class Spend:
    """What a provider's jobs created today (UTC) cost, in its unit, against its daily budget if set."""

    provider: str
    spent: float
    unit: str | None
    budget: float | None
    open_jobs: int  # jobs of today with no cost reported yet

    @property
    def share(self) -> float | None:
        return self.spent / self.budget if self.budget else None


@dataclass(frozen=True)
class Health:
    budgets: list[BudgetUse]
    spending: list[Spend]
    queued_submits: int
    polling: int  # jobs submitted or running: the worker polls them when due
    next_due: datetime | None  # the earliest stored poll or delivery time
    last_round_ago: float | None  # seconds since the worker's last round in this process
    retrying: int
    dead: int
    handlers: list[HandlerRate]


def handler_rates(jobs: list[Job], configured: list[str]) -> list[HandlerRate]:
    """Each handler's deliveries over `jobs`: the configured ones first, then any others seen."""
    seen: dict[str, Counter[str]] = {name: Counter() for name in configured}
    for job in jobs:
        for delivery in job.deliveries:
            seen.setdefault(delivery.handler, Counter())[str(delivery.status)] += 1
    return [
        HandlerRate(
            name,
            counts[DeliveryStatus.DELIVERED],
            counts[DeliveryStatus.RETRYING],
            counts[DeliveryStatus.DEAD],
        )
        for name, counts in seen.items()
    ]
