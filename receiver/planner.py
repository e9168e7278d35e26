"""When to look at a job again, and which due job gets the next request: pure functions of the job's
completion model (receiver/completion.py), its history (submit, last look) and the rate budget.

- A job that sends no webhooks is looked at again once the chance that it finished since the last
  look reaches THRESHOLD: dense where the model says videos finish, sparse before; about 1/THRESHOLD
  looks per job wherever the model puts its end, widening past the model's p99, never more than
  MAX_STEP apart.
- A job whose provider sends webhooks is looked at only well past the model's p99 (the webhook is
  missing), then at widening gaps.
- When more looks are due than the budget has slots, each slot goes to the due job most likely to
  have finished since its last look; budgeted looks go out one per `spacing` (window / limit), so the
  budget is spread across its window instead of spent in a burst that then stalls every look.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from receiver import schedule
from receiver.completion import Lognormal
from receiver.schedule import MAX_STEP, MIN_GAP

THRESHOLD = 0.07  # about 14 looks per job wherever it finishes
RECONCILE_QUANTILE = 0.99
# Past the model's p99 the model is wrong for this job (the provider is slow today): instead of looking
# every MIN_GAP at a job it says must be done, the gap grows with the job's age.
TAIL_QUANTILE = 0.99
TAIL_GAP = 0.1

# Seconds after submit of the next look, given the model and the seconds after submit of the last one.
Plan = Callable[[Lognormal, float], float]


def chance(model: Lognormal, last: float, now: float) -> float:
    """The chance that a job not finished at `last` (seconds after submit) has finished by `now`."""
    if now <= last:
        return 0.0
    alive = 1.0 - model.cdf(last)
    if alive <= 0.0:
        return 1.0
    return min(1.0, (model.cdf(now) - model.cdf(last)) / alive)


def polling_plan(model: Lognormal, last: float, threshold: float = THRESHOLD) -> float:
    """The first moment after `last` at which `chance(model, last, t)` reaches `threshold`, at least
    MIN_GAP (and past the model's p99, TAIL_GAP x `last`) and at most MAX_STEP after `last`."""
    finished = model.cdf(last)
    target = finished + threshold * (1.0 - finished)
    at = model.quantile(target) if target < 1.0 - 1e-12 else last  # the model says: done by now
    gap = MIN_GAP
    if last >= model.quantile(TAIL_QUANTILE):
        gap = max(gap, TAIL_GAP * last)
    return min(max(at, last + gap), last + MAX_STEP)


def webhook_plan(model: Lognormal, last: float) -> float:
    """Reconciliation: 1.2 x the model's p99 after submit, then widening gaps up to MAX_STEP."""
    expected = model.quantile(RECONCILE_QUANTILE)
    for offset in schedule.webhook_plan(expected):
        if offset >= last + MIN_GAP:
            return offset
    raise AssertionError("a poll plan never ends")


def next_look_at(
    plan: Plan, model: Lognormal, submitted_at: datetime, now: datetime, deadline: datetime | None = None
) -> datetime:
    """The next look after one at `now`, by `plan`, never past `deadline`."""
    last = (now - submitted_at).total_seconds()
    at = submitted_at + timedelta(seconds=plan(model, last))
    return at if deadline is None else min(at, deadline)


@dataclass(frozen=True)
class Due:
    """A job whose look is due at `due_at` (now or soon): its model and history."""

    id: str
    model: Lognormal
    submitted_at: datetime
    last_look: datetime | None  # None: not looked at since submit
    due_at: datetime
    budgeted: bool  # its requests spend the rate budget

    def chance(self, now: datetime) -> float:
        last = self.last_look or self.submitted_at
        return chance(
            self.model, (last - self.submitted_at).total_seconds(), (now - self.submitted_at).total_seconds()
        )


def choose(
    candidates: Sequence[Due], now: datetime, budget_slots: int, capacity: int, most: int
) -> list[Due]:
    """The looks to make now (at most `most`), from the jobs due now or within the budget's window: the
    `budget_slots` budgeted ones most likely to have finished since their last look (ties: the earliest
    submitted), then the unbudgeted ones due now. Budgeted ones are taken from the jobs due now, or,
    when more budgeted looks fall due within the window than its `capacity`, from all of them: the
    budget cannot make every planned look on time, so a free slot now goes to the likeliest one rather
    than unused."""
    ranked = sorted(candidates, key=lambda d: (-d.chance(now), d.submitted_at, d.id))
    budgeted = [d for d in ranked if d.budgeted]
    if len(budgeted) <= capacity:
        budgeted = [d for d in budgeted if d.due_at <= now]
    free = [d for d in ranked if not d.budgeted and d.due_at <= now]
    return (budgeted[: max(0, budget_slots)] + free)[: max(0, most)]


@dataclass(frozen=True)
class Pace:
    """Budgeted requests one per `spacing` seconds (monotonic clock): `free_at` is when the next may go."""

    spacing: float
    free_at: float = -math.inf

    def slots(self, now: float) -> int:
        return 1 if now >= self.free_at else 0

    def spent(self, now: float) -> Pace:
        return Pace(self.spacing, max(self.free_at, now) + self.spacing)

    def busy(self, now: float, wait: float | None) -> Pace:
        """The budget had no slot: try again when it says one frees (`spacing` when it cannot tell)."""
        return Pace(self.spacing, now + (self.spacing if wait is None else max(wait, MIN_GAP)))
