"""What jobs cost, the daily budget per provider, and its `budget` events.

Costs are the providers' own figures (Apiframe's `creditCost` in credits, refunded on FAILED; Runbase's
`costUsd` in US dollars, paid at submit, no refund documented), stored per job. A day is a UTC day and
counts the jobs created in it. The budget check is made before a submit is sent, and made again in the
transaction that records the job, one process after another (`Store.create_job` with a SpendLimit):
jobs submitted at the same moment by several processes cannot together cross it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, time
from typing import Any

from handlers import BUDGET_EVENT
from receiver.config import Settings
from receiver.events import cost_unit, iso, new_event_id
from receiver.providers.base import ProviderError
from receiver.store import JobCost, SpendLimit, Store

BUDGET_LEVELS = (80, 100)  # percent of a daily budget at which a `budget` event is sent, once each
GROUPINGS = ("provider", "model", "metadata")


class BudgetExceeded(ProviderError):
    """The submit would take the provider past its daily budget; nothing was sent."""

    def __init__(self, provider: str, spent: float, cost: float, budget: float) -> None:
        unit = cost_unit(provider) or ""
        message = (
            f"daily budget exceeded: {provider.upper()}_DAILY_BUDGET is {budget:g} {unit}, "
            f"{spent:g} spent or committed today, this job would cost about {cost:g}"
        )
        super().__init__(provider, message, code="daily_budget_exceeded")


def day_start(now: datetime) -> datetime:
    """Midnight UTC of `now`'s day: the budget's day starts there."""
    return datetime.combine(now.astimezone(UTC).date(), time(), tzinfo=UTC)


async def estimate(store: Store, settings: Settings, provider: str) -> float:
    """What one more job on `provider` is taken to cost before it reports a cost."""
    if provider in settings.cost_estimates:
        return settings.cost_estimates[provider]
    return await store.last_cost(provider) or 0.0


async def spend_limit(store: Store, settings: Settings, provider: str, now: datetime) -> SpendLimit | None:
    """Today's budget for `provider` and what one more job on it is taken to cost; None: no budget."""
    budget = settings.daily_budgets.get(provider)
    if budget is None:
        return None
    return SpendLimit(budget, await estimate(store, settings, provider), day_start(now))


def over(provider: str, limit: SpendLimit, committed: float) -> BudgetExceeded:
    return BudgetExceeded(provider, committed, limit.estimate, limit.limit)


async def check_budget(store: Store, settings: Settings, provider: str, now: datetime) -> SpendLimit | None:
    """Raise BudgetExceeded when a new job would take `provider` past its daily budget: what today's jobs
    cost, the open ones without a cost yet counted at the estimate, plus this one's estimate. Returns the
    limit, for `Store.create_job` to check again as it records the job."""
    limit = await spend_limit(store, settings, provider, now)
    if limit is not None:
        committed = limit.committed(*await store.spent_since(provider, limit.since))
        if not limit.fits(committed):
            raise over(provider, limit, committed)
    return limit


async def budget_events(
    store: Store, settings: Settings, provider: str, now: datetime
) -> list[dict[str, Any]]:
    """The `budget` events of the levels of BUDGET_LEVELS that today's costs for `provider` have
    reached (whether a process announced them already is `Store.budget_alert`'s to say)."""
    budget = settings.daily_budgets.get(provider)
    if not budget:
        return []
    spent, _ = await store.spent_since(provider, day_start(now))
    day = day_start(now).date().isoformat()
    return [
        budget_event(provider, day, level, spent, budget, now)
        for level in BUDGET_LEVELS
        if spent >= budget * level / 100
    ]


def budget_event(
    provider: str, day: str, level: int, spent: float, budget: float, now: datetime
) -> dict[str, Any]:
    """The `budget` event's JSON (handlers opt in with `events = ["budget"]`)."""
    return {
        "id": new_event_id(),
        "type": BUDGET_EVENT,
        "created_at": iso(now),
        "budget": {
            "provider": provider,
            "day": day,
            "level": level,
            "spent": spent,
            "limit": budget,
            "unit": cost_unit(provider),
        },
    }


@dataclass(frozen=True)
class CostLine:
    """One row of `receiver costs`: a group, its unit, its job count and its total."""

    group: str
    unit: str
    jobs: int
    total: float


def grouping(by: str) -> tuple[str, str | None]:
    """`provider`, `model` or `metadata KEY` (also `metadata:KEY`) as (what, key); ValueError else."""
    what, _, key = by.replace(":", " ", 1).partition(" ")
    key = key.strip()
    if what not in GROUPINGS or (what == "metadata") != bool(key):
        raise ValueError(f"--by must be provider, model or 'metadata KEY', got {by!r}")
    return what, key or None


def sum_costs(costs: Iterable[JobCost], by: str = "provider") -> list[CostLine]:
    """Totals per group and unit (credits and dollars are never added together), largest first."""
    what, key = grouping(by)
    totals: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])
    for cost in costs:
        if what == "metadata":
            value = cost.metadata.get(key or "")
            group = "(none)" if value is None else str(value)
        else:
            group = cost.provider if what == "provider" else cost.model
        line = totals[(group, cost_unit(cost.provider) or "?")]
        line[0] += 1
        line[1] += cost.cost
    lines = [CostLine(g, u, int(n), round(t, 6)) for (g, u), (n, t) in totals.items()]
    return sorted(lines, key=lambda line: (line.unit, -line.total, line.group))
