"""The worker: due polls, overdue jobs, due deliveries and owed `budget` events, in rounds or a loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Sequence
from datetime import datetime, timedelta
from typing import Any

import structlog

from handlers import HandlerSpec, PermanentError, RetryLater
from receiver import planner
from receiver.completion import Kind, Lognormal
from receiver.config import SettingsError
from receiver.events import Job, JobStatus
from receiver.logs import mask
from receiver.providers import registry
from receiver.providers.base import ProviderError
from receiver.providers.ratelimit import BudgetBusy
from receiver.schedule import MAX_STEP, retry_delay
from receiver.service import Receiver, confirmed
from receiver.store import DueBudget, DueDelivery

log = structlog.get_logger()

POLL_BATCH = 50
CONCURRENCY = 16
# A claim's lease (polls, submits), and the least a delivery's: work is claimed CONCURRENCY at a time, so
# all of it starts at once, inside its lease. A delivery is leased for longer than its handlers' timeout
# (`Worker.lease`), so an attempt always ends inside it. A killed worker's claims are free again then.
LEASE = 30.0
MAX_IDLE = 1.0  # without notices (SQLite, listen connection lost) other processes' work is found by looking
MAX_IDLE_LISTENING = 5.0  # notices wake the worker for new work: this only bounds what a lost one can delay
MAX_BACKOFF = 30.0  # the longest wait between rounds while the store or a provider fails


class Worker:
    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self._wake = asyncio.Event()
        # When the last round finished (the receiver's monotonic clock); /healthz reads it.
        self.last_round: float | None = None
        settings = receiver.settings
        self._pace = planner.Pace(settings.runbase_rate_window / settings.runbase_rate_limit)
        self._held = False  # due polls were left for the pace or the budget: look again when it frees
        # When the pool of jobs sharing the budget is next worth a request (planner.pool_fills), though
        # none is due by its own plan: the loop comes back then, or when the pace frees if later.
        self._pool_at: datetime | None = None
        # The allowance (planner.ALLOWANCE looks by a job's own plan) that budgeted jobs ended by a poll
        # did not use, for the jobs still in flight (planner.choose's `spare`), and each job's looks so far
        # by its own plan. Kept while a budgeted job is in flight; a lone job starts with none.
        self._spare = 0.0
        self._own: Counter[str] = Counter()
        # Budgeted jobs found in a batch (planner.batch_mates), kept after their batch-mates ended so
        # the last of a batch is still one; kept while a budgeted job is in flight.
        self._batched: set[str] = set()
        # While `run` loops: the deliveries of jobs this process's records end, leased by the record and
        # handed to it (`hand_off`), each job's in a task of its own; `_promised`: records under way
        # that will hand theirs off (`promise`).
        self._handed: set[asyncio.Task[None]] | None = None
        self._promised = 0
        self._handing = asyncio.Event()  # a hand-off started: the loop, asleep, waits for it to end
        # A delivery may free another one of its job (`after`): a job's claim is repeated until empty.
        self._ordered = any(spec.after for spec in receiver.specs)

    def wake(self) -> None:
        self._wake.set()

    def promise(self) -> datetime | None:
        """The lease for the deliveries of a job a record of this process is about to end, when the
        hand-off will take them (None: the loop, or another worker, claims them as any due delivery).
        The record inserts them leased to this process and `hand_off` runs them: no claim, and no
        wake-up of this loop or notice to other processes, between the commit and the handler's call.
        Under load each await there waits one pass of a busy event loop (15-20 ms at 4000 webhooks/s).
        Only while `run` loops here, and for at most CONCURRENCY jobs at once; each promise is ended by
        `unpromise` once the record returns, whatever it did."""
        if self._handed is None or len(self._handed) + self._promised >= CONCURRENCY:
            return None
        self._promised += 1
        return self.receiver.clock() + self.lease()

    def unpromise(self) -> None:
        self._promised -= 1

    def hand_off(self, job_id: str, leased: Sequence[DueDelivery]) -> None:
        """Run the deliveries a record of this process leased to it (`promise`), in a task of their own.
        Should the loop have stopped meanwhile, they are free again when their lease runs out."""
        handed = self._handed
        if handed is None or not leased:
            return
        task = asyncio.get_running_loop().create_task(self._deliver_leased(job_id, leased))
        handed.add(task)
        task.add_done_callback(handed.discard)
        self._handing.set()

    async def _deliver_leased(self, job_id: str, leased: Sequence[DueDelivery]) -> None:
        counts: Counter[str] = Counter()
        try:
            await self._deliver_all(leased, counts)
            # A delivery may have freed another of the job (`after`): claimed in turn until none is due.
            while self._ordered and await self._dispatch(counts, [job_id]):
                pass
        except Exception:  # the store failed: what was not claimed stays due, a claim's lease runs out
            log.exception("delivery.hand_off_failed", job_id=job_id)
            self.wake()
        if counts["retried"]:  # the loop, asleep since before, plans its sleep again: until the retry
            self.wake()
        if counts:
            self.receiver.changes.bump()

    async def _handed_off(self) -> None:
        """Wait for the deliveries handed off so far to end: the loop plans its sleep after them (a retry
        they stored may be due before it), and it is never asleep while one runs, as when it ran them."""
        if self._handed:
            await asyncio.wait(list(self._handed))

    @property
    def wake_pending(self) -> bool:
        """A wake-up the loop has not taken yet (once taken, the sleep it cut short is over)."""
        return self._wake.is_set()

    async def tick(self, *, paced: bool = False) -> dict[str, int]:
        """One round: time out overdue jobs, poll due ones, then dispatch until nothing is due. A poll
        never waits for the rate budget: what it cannot take now stays due. `paced` (the `run` loop,
        which comes back when the pace allows): at most one budgeted poll; otherwise (one round from
        cron or a serverless schedule) as many as the budget takes now, up to CONCURRENCY."""
        counts: Counter[str] = Counter()
        await self._expire(counts)
        await self._submit(counts)
        await self._poll(counts, paced)
        summary = _summary(counts, Counter(await self.dispatch()))
        self.last_round = self.receiver.clock.monotonic()
        if any(summary.values()):  # a poll counted, a submit sent: the dashboard's pages look again
            self.receiver.changes.bump()
        return summary

    async def dispatch(self) -> dict[str, int]:
        """Deliver everything due, round after round (a delivery may free one that waits `after` it),
        `budget` events too."""
        counts: Counter[str] = Counter()
        while await self._dispatch(counts):
            pass
        await self._budgets(counts)
        if counts:
            self.receiver.changes.bump()
        return _summary(counts)

    async def run(self, stop: asyncio.Event) -> None:
        """Tick, then sleep until the next stored due time, `stop`, or a wake-up. A wake-up (work became
        due: recorded by this process, or by another one on PostgreSQL) only dispatches; the full round
        comes when the sleep runs out, or at the first wake-up past that time (wake-ups that keep coming,
        a steady stream of completions, never hold back the polls). Meanwhile jobs this process ends
        are delivered by `hand_off`; those started are finished before this returns."""
        receiver = self.receiver
        notices = receiver.settings.listen
        self._handed, self._batch = set(), None
        try:
            await self._loop(stop, notices)
        finally:
            handed, self._handed, self._batch = self._handed, None, None
            await asyncio.gather(*handed, return_exceptions=True)  # started deliveries end, as a round's do

    async def _loop(self, stop: asyncio.Event, notices: bool) -> None:
        receiver = self.receiver
        async with receiver.store.listen(self.wake, receiver.clock.sleep, notices=notices):
            clock = receiver.clock
            woken, round_at = False, clock.monotonic()  # round_at: when the next full round is due
            self.last_round = round_at  # the first round is due within the bound too
            failures = 0
            while not stop.is_set():
                self._wake.clear()
                full = not woken or clock.monotonic() >= round_at
                try:
                    await (self.tick(paced=True) if full else self.dispatch())
                    await self._handed_off()
                    idle = await self._idle()
                    failures = 0
                except Exception:  # the store or a provider is down: back off and try again, never die
                    failures += 1
                    idle = retry_delay(failures, 1.0, MAX_BACKOFF)
                    log.exception("worker.round_failed", failures=failures, retry_in=round(idle, 1))
                # A round that only dispatched never puts the full round off.
                round_at = clock.monotonic() + idle if full else min(round_at, clock.monotonic() + idle)
                woken = await self._sleep(idle, stop)

    async def _sleep(self, idle: float, stop: asyncio.Event) -> bool:
        """Sleep `idle` seconds, or until a wake-up or `stop`; True when woken. A hand-off meanwhile does
        not cut the sleep short: the loop waits for its deliveries to end, as for those of its own round
        (it is never asleep while one runs), and sleeps on until the same moment. One that stored a
        retry wakes it (`_deliver_leased`), and its sleep is planned again."""
        clock = self.receiver.clock
        until = clock.monotonic() + idle
        while True:
            left = max(0.0, until - clock.monotonic())
            await _first((self._wake, self._handing), stop, clock.sleep(left))
            if self._wake.is_set() or stop.is_set() or not self._handing.is_set():
                return self._wake.is_set()
            self._handing.clear()
            await self._handed_off()

    async def _idle(self) -> float:
        """Seconds until the next stored due time or the pool's (`_pool_at`, no sooner than the pace
        allows), within the safety net: MAX_IDLE_LISTENING while notices arrive (they wake the worker
        for anything new), MAX_IDLE when only looking finds other work."""
        store, clock = self.receiver.store, self.receiver.clock
        longest = MAX_IDLE_LISTENING if store.listening else MAX_IDLE
        due = await store.next_due()
        until = longest if due is None else (due - clock()).total_seconds()
        pace = self._pace.free_at - clock.monotonic()
        if self._held and until <= 0:  # what is due waits for the budget's pace, not a busy loop
            until = pace
        if self._pool_at is not None:
            until = min(until, max((self._pool_at - clock()).total_seconds(), pace))
        return min(longest, max(0.0, until))

    def _forget(self, job_id: str) -> int:
        """A job ended: drop what the loop kept for it (its batch, its looks); its looks by its own plan."""
        self._batched.discard(job_id)
        return self._own.pop(job_id, 0)

    async def _expire(self, counts: Counter[str]) -> None:
        for job_id in await self.receiver.store.overdue_jobs(self.receiver.clock(), POLL_BATCH):
            self._forget(job_id)
            if (await self.receiver.time_out(job_id)).terminal:
                counts["timed_out"] += 1

    async def _submit(self, counts: Counter[str]) -> None:
        """Send due queued jobs, ahead of polls; resubmit (same body and key) or give up on `unknown`
        jobs, whose answer was lost, and `pending` ones whose submitting process stopped before it."""
        receiver = self.receiver
        store, lease = receiver.store, receiver.settings.submit_lease
        lost = await store.claim_submits(JobStatus.PENDING, receiver.clock(), POLL_BATCH, lease)
        lost += await store.claim_submits(JobStatus.UNKNOWN, receiver.clock(), POLL_BATCH, lease)
        queued = await store.claim_submits(JobStatus.QUEUED, receiver.clock(), POLL_BATCH, lease)

        async def send(job: Job, orphan: bool) -> None:
            try:
                if orphan and not registry.get(job.provider).idempotent_submit:
                    if (await receiver.lose(job)).terminal:
                        counts["lost"] += 1
                    return
                if orphan:
                    log.info("job.resubmit", job_id=job.id, provider=job.provider)
                counts["submitted" if await receiver.send(job) else "queued"] += 1
            except (ProviderError, SettingsError) as exc:
                log.warning("submit.failed", job_id=job.id, provider=job.provider, error=str(exc))

        sends: list[Awaitable[None]] = [send(job, orphan=True) for job in lost]
        await _bounded(sends + [send(job, orphan=False) for job in queued])

    async def _poll(self, counts: Counter[str], paced: bool) -> None:
        """Look at due jobs (receiver/planner.py): every one whose provider has no rate budget, and the
        budgeted ones whose videos have likely waited longest unseen (`paced`: one per pace step, also
        from jobs not due yet once their pooled chance reaches the threshold), all inside their lease.
        The rest stay due: no planned look is dropped."""
        receiver = self.receiver
        store = receiver.store
        now = receiver.clock()
        # The loop reads every job in flight (no plan looks further ahead than MAX_STEP) without a lease,
        # pools their chances, and may spend a free slot on one before its planned time (planner.choose):
        # only the jobs it looks at are leased, so a round writes one row, not every job in flight. A
        # one-shot round leases what is due, in one statement.
        window = timedelta(seconds=MAX_STEP if paced else 0.0)
        claimed = [] if paced else await store.claim_due_polls(now, POLL_BATCH, LEASE)
        ahead = await store.pending_polls(now, POLL_BATCH, now + window) if paced else []
        self._held, self._pool_at = False, None
        if paced and not any(registry.get(job.provider).spends_budget for job in claimed + ahead):
            # no job in flight left to pass an allowance to, or to share a batch with
            self._spare, self._own, self._batched = 0.0, Counter(), set()
        if not claimed and not ahead:
            return
        models = await receiver.completion_models()
        jobs = {job.id: job for job in claimed + ahead}
        due = [
            planner.Due(
                job.id,
                models.get(Kind.of(job.provider, job.model, job.request)),
                job.submitted_at or job.created_at,
                job.polled_at,
                job.next_poll_at or now,
                registry.get(job.provider).spends_budget,
            )
            for job in jobs.values()
        ]
        if len(jobs) < POLL_BATCH:  # every job in flight was read: forget those ended elsewhere
            self._batched &= jobs.keys()
        self._batched |= planner.batch_mates(due)
        batched = self._batched
        moment = receiver.clock.monotonic()
        slots = self._pace.slots(moment) if paced else CONCURRENCY
        spare = paced and self._spare >= 1.0
        chosen = planner.choose(due, now, slots, CONCURRENCY, spare=spare, batched=batched)
        leased = {job.id for job in claimed}
        if early := [look.id for look in chosen if look.id not in leased]:
            # Read unleased: another process may have leased one since. What it took is its look.
            got = await store.claim_chosen_polls(early, now, LEASE)
            jobs.update((job.id, job) for job in got)
            leased |= {job.id for job in got}
            chosen = [look for look in chosen if look.id in leased]
        if budgeted_looks := [look for look in chosen if look.budgeted]:
            self._pace = self._pace.spent(moment)
            own = [look.id for look in budgeted_looks if look.due_at <= now]
            self._own.update(own)
            if spare and not own and planner.pool(due, now, batched) < planner.THRESHOLD:
                self._spare -= 1.0  # neither its plan nor the pool paid for this look
        picked = {look.id for look in chosen}
        left = [look for look in due if look.id not in picked]
        if planner.batch_finishing(due, now, batched) or (
            self._spare >= 1.0 and any(look.budgeted and look.chance(now) > 0 for look in due)
        ):
            # The next slot the pace frees goes to a job in flight: a batch's, or one that may have
            # finished (a job just submitted has nothing to find yet, and the loop would not sleep for it).
            self._pool_at = now
        else:
            self._pool_at = planner.pool_fills(left, now, now + window, batched)
        await store.release_polls([job.id for job in claimed if job.id not in picked])
        self._held = any(look.due_at <= now for look in left)
        budgeted = [jobs[look.id] for look in chosen if look.budgeted]
        models_of = {look.id: look.model for look in chosen}

        async def in_turn() -> None:
            """Budgeted looks one after another, each only if the budget has a slot now: the first it
            refuses leaves the rest due (no round waits for the budget)."""
            for n, job in enumerate(budgeted):
                if not await self._look(job, models_of[job.id], counts):
                    await receiver.store.release_polls([j.id for j in budgeted[n + 1 :]])
                    return

        free = [self._look(jobs[look.id], look.model, counts) for look in chosen if not look.budgeted]
        await asyncio.gather(in_turn(), _bounded(free))

    async def _look(self, job: Job, model: Lognormal, counts: Counter[str]) -> bool:
        """One status read, then the next look planned from the moment this one was sent; False when
        the budget had no slot now (the job stays due)."""
        receiver = self.receiver
        sent = receiver.clock()
        try:
            client = receiver.client(job.provider)
            status = await client.get_status(job.provider_job_id or "", within=0.0)
        except BudgetBusy as exc:  # the budget is spent (by this process or another one) for now
            self._pace = self._pace.busy(receiver.clock.monotonic(), exc.wait)
            self._held = True
            await receiver.store.release_polls([job.id])
            return False
        except (ProviderError, SettingsError) as exc:
            log.warning("poll.failed", job_id=job.id, provider=job.provider, error=str(exc))
            receiver.metrics.poll(job.provider, ok=False)
            seen = None  # a look that failed saw nothing: chances still run from the last one that did
        else:
            counts["polled"] += 1
            receiver.metrics.poll(job.provider, ok=True)
            if (await receiver.record(job.id, confirmed(status), via="poll")).terminal:
                counts["completed"] += 1
                if registry.get(job.provider).spends_budget:  # what it did not use passes on
                    self._spare += planner.unspent(self._forget(job.id))
                await receiver.store.schedule_poll(job.id, None, sent)
                return True
            seen = sent
        spec = registry.get(job.provider)
        next_at = spec.next_poll_at(job.submitted_at or job.created_at, sent, model, job.deadline_at)
        await receiver.store.schedule_poll(job.id, next_at, seen)
        return True

    async def _dispatch(self, counts: Counter[str], job_ids: list[str] | None = None) -> int:
        """Claim due deliveries (of `job_ids`, when given) and run them; how many."""
        receiver = self.receiver
        lease = self.lease().total_seconds()
        due = await receiver.store.claim_due_deliveries(receiver.clock(), CONCURRENCY, lease, job_ids)
        if due:
            await self._deliver_all(due, counts)
        return len(due)

    async def _deliver_all(self, due: Sequence[DueDelivery], counts: Counter[str]) -> None:
        """The first in this task, now; the others in tasks of their own, which start one pass later."""
        others = [asyncio.ensure_future(self._deliver(d, counts)) for d in due[1:]]
        try:
            await self._deliver(due[0], counts)
        finally:
            await asyncio.gather(*others)

    def lease(self, handlers: Sequence[str] | None = None) -> timedelta:
        """How long a process holds the deliveries (or `budget` events) it claims for `handlers` (by
        default every configured one): LEASE, or longer than the slowest one's timeout, so an attempt
        ends inside its lease and no other process starts it again meanwhile."""
        names = self.receiver.by_name if handlers is None else handlers
        specs = [spec for name in names if (spec := self.receiver.by_name.get(name))]
        return timedelta(seconds=max([LEASE, *(spec.timeout + LEASE / 2 for spec in specs)]))

    async def _budgets(self, counts: Counter[str]) -> None:
        """Send the `budget` events owed and due: a retry, or one whose sender stopped before it."""
        receiver = self.receiver
        now = receiver.clock()
        lease = now + self.lease()
        claimed = await receiver.store.claim_budget_deliveries(now, CONCURRENCY, lease)
        counts.update(await asyncio.gather(*(self.deliver_budget(due) for due in claimed)))

    async def deliver_budget(self, due: DueBudget) -> str:
        """One attempt at a `budget` event for one handler, retried as a job's event would be; its
        outcome: delivered, retried or dead."""
        receiver = self.receiver
        spec = receiver.by_name.get(due.handler)
        fields = {"handler": due.handler, "provider": due.provider, "level": due.level}
        attempt = due.attempts + 1
        if spec is None:
            error, retry_at = "handler is no longer configured", None
        else:
            try:
                async with asyncio.timeout(spec.timeout):
                    await spec.handler.handle(dict(due.event))
            except Exception as exc:  # a handler's failure is the handler's: stored, retried or dead
                error, retry_at = _error(exc), _retry_at(spec, attempt, exc, receiver.clock())
            else:
                await receiver.store.finish_budget_delivery(due, delivered=True)
                log.info("budget.delivered", attempt=attempt, **fields)
                receiver.metrics.delivery(due.handler, "delivered", due.event, receiver.clock())
                return "delivered"
        log.warning("budget.undelivered", attempt=attempt, error=error, retry=retry_at is not None, **fields)
        await receiver.store.finish_budget_delivery(due, delivered=False, error=error, retry_at=retry_at)
        outcome = "retried" if retry_at else "dead"
        receiver.metrics.delivery(due.handler, outcome, due.event, receiver.clock())
        return outcome

    async def _deliver(self, due: DueDelivery, counts: Counter[str]) -> None:
        receiver = self.receiver
        spec = receiver.by_name.get(due.handler)
        store = receiver.store
        fields = {"job_id": due.job_id, "handler": due.handler, "event_id": due.event.get("id")}

        async def finish(**outcome: Any) -> None:
            """This attempt's end, for the event it was claimed with only, at the time it ended."""
            event_id, now = due.event.get("id"), receiver.clock()
            await store.finish_delivery(due.job_id, due.handler, event_id=event_id, at=now, **outcome)

        if spec is None:
            await finish(delivered=False, error="handler is no longer configured")
            counts["dead"] += 1
            receiver.metrics.delivery(due.handler, "dead", due.event, receiver.clock())
            return
        event = dict(due.event)
        if spec.after:
            event["reports"] = due.reports
        attempt = due.attempts + 1
        try:
            async with asyncio.timeout(spec.timeout):  # the call in this task: wait_for would make another
                report = await spec.handler.handle(event)
        except PermanentError as exc:
            error = _error(exc)
            log.warning("delivery.dead", attempt=attempt, error=error, **fields)
            await finish(delivered=False, error=error)
            counts["dead"] += 1
            receiver.metrics.delivery(due.handler, "dead", due.event, receiver.clock())
            return
        except Exception as exc:
            error, retry_at = _error(exc), _retry_at(spec, attempt, exc, receiver.clock())
            log.warning("delivery.failed", attempt=attempt, error=error, retry=retry_at is not None, **fields)
            await finish(delivered=False, error=error, retry_at=retry_at)
            outcome = "retried" if retry_at else "dead"
            counts[outcome] += 1
            receiver.metrics.delivery(due.handler, outcome, due.event, receiver.clock())
            return
        log.info("delivery.delivered", attempt=attempt, **fields)
        await finish(delivered=True, report=report)
        counts["delivered"] += 1
        receiver.metrics.delivery(due.handler, "delivered", due.event, receiver.clock())


def _summary(*counts: Counter[str]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for c in counts:
        total.update(c)
    keys = ("submitted", "queued", "lost", "polled", "completed", "timed_out", "delivered", "retried", "dead")
    return {key: total[key] for key in keys}


def _error(exc: Exception) -> str:
    """A handler's failure as stored and logged: a PermanentError's own words, else its type too."""
    if isinstance(exc, PermanentError):
        return mask(str(exc) or type(exc).__name__)
    return mask(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def _retry_at(spec: HandlerSpec, attempt: int, exc: Exception, now: datetime) -> datetime | None:
    """When to try again after attempt `attempt` failed with `exc`: None when it is the last (a
    PermanentError, or the handler's max_attempts reached)."""
    if isinstance(exc, PermanentError) or attempt >= spec.max_attempts:
        return None
    wait = exc.delay if isinstance(exc, RetryLater) else retry_delay(attempt, spec.retry_base, spec.retry_max)
    return now + timedelta(seconds=wait)


async def _first(wakes: Sequence[asyncio.Event], stop: asyncio.Event, sleep: Awaitable[None]) -> None:
    """Wait for any of `wakes`, `stop` or `sleep` (on the receiver's clock)."""
    waiters = [asyncio.ensure_future(w) for w in (*(wake.wait() for wake in wakes), stop.wait(), sleep)]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waiters:
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter


async def _bounded(coros: Sequence[Awaitable[object]]) -> None:
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def run(coro: Awaitable[object]) -> None:
        async with semaphore:
            await coro

    await asyncio.gather(*(run(c) for c in coros))
