"""When to look at a job again, and which job gets the next request: pure functions of the job's
completion model (receiver/completion.py), its history (submit, last look) and the rate budget.

- A job that sends no webhooks is looked at again once the chance that it finished since the last
  look reaches THRESHOLD: dense where the model says videos finish, sparse before; about 1/THRESHOLD
  looks per job wherever the model puts its end, widening past the model's p99, never more than
  MAX_STEP apart.
- A job whose provider sends webhooks is looked at only well past the model's p99 (the webhook is
  missing), then at widening gaps.
- Jobs that share a rate budget pool their chances. THRESHOLD is the price of a request, counted in
  videos found: a request is worth sending once the expected number of jobs that finished since
  their last look (`pool`, over the budgeted jobs in flight) reaches it. A lone job's pool is its
  own chance, so it is looked at when its own plan says (about 1/THRESHOLD looks); k jobs in flight
  fill the pool about k times as fast, so budget that would sit idle is spent on them, up to all of
  it when many are near their end. Jobs past their model's p99 stay out of the pool: the model is
  wrong for them, and their widening plan bounds what they cost.
- Each job is allowed about ALLOWANCE = 1/THRESHOLD looks by its own plan (what the pool sends is the
  pool's); when a job ends, what it did not use of that allowance passes to the jobs still in flight
  with it, which spend it on the slots the pool leaves idle (`choose`'s `spare`), a look each. A lone
  job has no one to inherit from and keeps its 1/THRESHOLD looks; jobs in flight together (a batch
  or not) get the budget that the ones ended before them did not need.
- Jobs submitted together (each within BATCH_GAP of another budgeted job in flight: `batch_mates`)
  are a batch, awaited as one. While a job of a batch is inside its model's finishing window (its
  FINISHING quantiles), every request the budget allows is worth sending (`pool` is full): at a
  batch's two ends, before its first video can be ready and after the others were found, the price
  would leave the budget idle while the whole batch waits on one video. A job keeps its place in the
  batch after its batch-mates ended (the caller remembers it), so the last one is looked at every pace
  step until its model's FINISHING p99.9; past that it keeps its own widening plan. A lone job, or
  jobs submitted a minute apart, are no batch and keep the price.
- Each request goes to the job whose video, if finished, has likely waited longest unseen (`waited`:
  the integral of its chance since the last look; ties: the one looked at longest ago). Ranking by
  chance alone looks at jobs near their end every few seconds and starves younger ones; by the
  expected wait, each job's gaps go as 1 / sqrt(its hazard), the least mean delay for the requests.
- Budgeted requests go out one per `spacing` (window / limit): the budget is spread across its
  window instead of spent in a burst that then stalls every look.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from receiver import schedule
from receiver.completion import Lognormal
from receiver.schedule import MAX_STEP, MIN_GAP

THRESHOLD = 0.07  # about 14 looks per job wherever it finishes
ALLOWANCE = 1 / THRESHOLD  # looks per job: what a job that ended sooner did not spend passes on
RECONCILE_QUANTILE = 0.99
# Past the model's p99 the model is wrong for this job (the provider is slow today): instead of looking
# every MIN_GAP at a job it says must be done, the gap grows with the job's age.
TAIL_QUANTILE = 0.99
TAIL_GAP = 0.1
# A batch: budgeted jobs submitted within this many seconds of each other (a batch of 10 takes 5 s to
# submit under the default budget; a steady stream one job a minute is no batch).
BATCH_GAP = 10.0
# A batch's job is finishing between these quantiles of its model: every slot is spent on it there.
FINISHING = (0.001, 0.999)
WAIT_STEPS = 8
POOL_STEPS = 20  # pool_fills looks for the moment the pool fills on this many steps, then bisects

# Seconds after submit of the next look, given the model and the seconds after submit of the last one.
Plan = Callable[[Lognormal, float], float]


def chance(model: Lognormal, last: float, now: float) -> float:
    """The chance that a job not finished at `last` (seconds after submit) has finished by `now`."""
    if now <= last:
        return 0.0
    alive = model.survival(last)
    if alive <= 0.0:
        return 1.0
    return min(1.0, max(0.0, 1.0 - model.survival(now) / alive))


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

    @property
    def last(self) -> datetime:
        return self.last_look or self.submitted_at

    def chance(self, now: datetime) -> float:
        return chance(
            self.model,
            (self.last - self.submitted_at).total_seconds(),
            (now - self.submitted_at).total_seconds(),
        )

    def waited(self, now: datetime) -> float:
        """The expected seconds its video has waited unseen: the integral of `chance` since the last
        look (trapezoids, WAIT_STEPS of them)."""
        last, span = (self.last - self.submitted_at).total_seconds(), (now - self.last).total_seconds()
        if span <= 0:
            return 0.0
        marks = [chance(self.model, last, last + span * i / WAIT_STEPS) for i in range(WAIT_STEPS + 1)]
        return span / WAIT_STEPS * (math.fsum(marks) - (marks[0] + marks[-1]) / 2)

    def finishing(self, now: datetime) -> bool:
        """Budgeted, and between its model's FINISHING quantiles: where its video may be ready."""
        age = (now - self.submitted_at).total_seconds()
        low, high = FINISHING
        return self.budgeted and self.model.quantile(low) <= age <= self.model.quantile(high)

    def pooled(self, now: datetime) -> float:
        """What it adds to the pool: its chance, while it is budgeted and younger than the model's
        TAIL_QUANTILE (past it the model is wrong for this job, which keeps its own widening plan)."""
        young = (now - self.submitted_at).total_seconds() < self.model.quantile(TAIL_QUANTILE)
        return self.chance(now) if self.budgeted and young else 0.0


def batch_mates(candidates: Sequence[Due]) -> set[str]:
    """The budgeted jobs submitted within BATCH_GAP of another budgeted one: the batches in flight."""
    submitted = sorted((d for d in candidates if d.budgeted), key=lambda d: d.submitted_at)
    mates: set[str] = set()
    for a, b in itertools.pairwise(submitted):
        if (b.submitted_at - a.submitted_at).total_seconds() <= BATCH_GAP:
            mates.update((a.id, b.id))
    return mates


def batch_finishing(candidates: Sequence[Due], now: datetime, batched: Collection[str]) -> bool:
    """Whether a job of a batch (`batched`: ids found in one by `batch_mates`, then or before) is
    finishing: every slot the budget allows is worth sending."""
    return any(d.id in batched and d.finishing(now) for d in candidates)


def pool(candidates: Sequence[Due], now: datetime, batched: Collection[str] = frozenset()) -> float:
    """The expected number of budgeted jobs that finished since their last look, of those not past
    their model's tail: how much there is to find with the next request; no limit while a job of a
    batch is finishing."""
    if batch_finishing(candidates, now, batched):
        return math.inf
    return math.fsum(d.pooled(now) for d in candidates)


def unspent(looks: int) -> float:
    """What a job that ended after `looks` looks leaves of its ALLOWANCE to the jobs still in flight."""
    return max(0.0, ALLOWANCE - looks)


def choose(
    candidates: Sequence[Due],
    now: datetime,
    budget_slots: int,
    most: int,
    spare: bool = False,
    batched: Collection[str] = frozenset(),
) -> list[Due]:
    """The looks to make now (at most `most`): the `budget_slots` budgeted ones whose videos have
    likely waited longest unseen (`Due.waited`; ties: the longest since looked at, then the earliest
    submitted), then the unbudgeted ones due now. Budgeted ones are taken from the jobs due now, and, once the
    pool (`pool`) reaches THRESHOLD, from every job in it: the request is worth its price somewhere,
    and goes where a finished video has likely waited longest. With `spare` (an allowance that jobs
    ended before did not use, see `unspent`), from every budgeted job that may have finished since its
    last look, in the pool or past its tail. A job of a batch (`batched`) fills the pool while it is
    finishing, and is taken then even past its model's p99."""
    ranked = sorted(candidates, key=lambda d: (-d.waited(now), d.last, d.submitted_at, d.id))
    pooling = pool(candidates, now, batched) >= THRESHOLD

    def takes(d: Due) -> bool:
        pooled = d.pooled(now) > 0 or (d.id in batched and d.finishing(now))
        return d.due_at <= now or (pooling and pooled) or (spare and d.chance(now) > 0)

    budgeted = [d for d in ranked if d.budgeted and takes(d)]
    free = [d for d in ranked if not d.budgeted and d.due_at <= now]
    return (budgeted[: max(0, budget_slots)] + free)[: max(0, most)]


def pool_fills(
    candidates: Sequence[Due], now: datetime, until: datetime, batched: Collection[str] = frozenset()
) -> datetime | None:
    """The first moment in [now, until] at which `pool(candidates)` reaches THRESHOLD (to within
    POOL_STEPS of the span and then MIN_GAP), None when it does not: when the next request is worth
    sending although no job is due by its own plan."""
    span = (until - now).total_seconds()
    if span <= 0 or not any(d.budgeted for d in candidates):
        return None
    low = now
    for step in range(POOL_STEPS + 1):
        at = now + timedelta(seconds=span * step / POOL_STEPS)
        if pool(candidates, at, batched) >= THRESHOLD:
            break
        low = at
    else:
        return None
    if at == now:
        return now
    while (at - low).total_seconds() > MIN_GAP:
        middle = low + (at - low) / 2
        if pool(candidates, middle, batched) >= THRESHOLD:
            at = middle
        else:
            low = middle
    return at


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
