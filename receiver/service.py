"""The receiver: store, provider clients, handlers and signer wired together, shared by app and CLI."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog

from handlers import HandlerSpec, build_handlers
from receiver import logs
from receiver.bodies import BadJSON, parse_object
from receiver.changes import Changes
from receiver.clock import Clock, system_clock
from receiver.completion import Kind, Lognormal, Models
from receiver.config import Settings, SettingsError
from receiver.costs import BudgetExceeded, budget_events, check_budget, day_start, over, sum_costs
from receiver.events import TERMINAL, Job, JobError, JobStatus, attempt, keyed_job_id, new_job_id
from receiver.failover import Choice, may_fail_over, parse_choice, providers_of
from receiver.generation import KlingRequest, ValidationError
from receiver.metrics import Metrics
from receiver.overview import BudgetLetter, BudgetUse, DeadLetter, Health, JobsPage, Spend, handler_rates
from receiver.providers import registry
from receiver.providers.base import (
    ProviderClient,
    ProviderError,
    ProviderStatus,
    RateLimited,
    ReportRefused,
    UnsupportedParameter,
    answer_lost,
)
from receiver.providers.ratelimit import BudgetBusy, RateBudget, StoreBudget
from receiver.providers.registry import UnknownProvider
from receiver.schedule import retry_delay
from receiver.signing import TokenError, WebhookSigner
from receiver.store import (
    DueBudget,
    HandlerRoute,
    OverBudget,
    Progressed,
    Recorded,
    SpendLimit,
    Store,
    StoreUnavailable,
    Update,
    open_store,
)

if TYPE_CHECKING:
    from receiver.worker import Worker

log = structlog.get_logger()
STORE_PING_TIMEOUT = 3.0  # real seconds /healthz waits for the store before calling it unreachable

# The completion-time models: read from the store's MODEL_HISTORY most recent successes, again at most
# MODELS_FRESH s after a job finished here and at least every MODELS_MAX_AGE s.
MODEL_HISTORY = 2000
WEBHOOKS = frozenset(name for name in registry.NAMES if registry.get(name).sends_webhooks)
MODELS_FRESH = 5.0
MODELS_MAX_AGE = 60.0

SUBMIT_RETRY_BASE = 1.0  # backoff of a submit refused with 429 and no Retry-After
SUBMIT_RETRY_MAX = 60.0
# The write that records a provider's acceptance: tried this often, with this backoff, while the store
# fails (about a minute in all: a PostgreSQL restart), before the submit fails.
ACCEPT_WRITES = 7
ACCEPT_RETRY_BASE = 0.5
ACCEPT_RETRY_MAX = 15.0

PAGE_SIZE = 25  # jobs per dashboard page
MAX_LISTED = 1000  # the most jobs a dashboard page reads at once
RECENT = 300.0  # seconds of provider requests the dashboard counts
REQUESTS_KEPT = 10_000

SECRET_KEYS = ("webhook_url", "secret", "token", "password", "api_key")

__all__ = [
    "BudgetLetter",
    "DeadLetter",
    "Health",
    "InvalidSubmit",
    "JobsPage",
    "NoSuchJob",
    "NotFinished",
    "Receiver",
    "Replayed",
    "StoreUnavailable",
    "UnknownProvider",
    "WebhookRefused",
    "confirmed",
    "update_from",
]


class NoSuchJob(LookupError):
    """No job has this id."""


class _Taken(Exception):
    """A job with this id was recorded by another call in the meantime."""


class IdempotencyConflict(ValueError):
    """An Idempotency-Key used before with another request."""


class NotFinished(ValueError):
    """The job has no final status yet, so no event to replay."""


class InvalidSubmit(ValueError):
    """A submit that breaks the rules of POST /jobs; `errors` maps each bad field to why."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{name}: {why}" for name, why in errors.items()))


class WebhookRefused(Exception):
    """A webhook the receiver will not record; `status` is the HTTP answer the contract gives it."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


@dataclass(frozen=True)
class Replayed:
    count: int
    event_id: str | None


class Receiver:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        specs: list[HandlerSpec],
        *,
        clients: dict[str, ProviderClient] | None = None,
        budget: RateBudget | None = None,
        clock: Clock = system_clock,
    ) -> None:
        self.settings = settings
        self.store = store
        self.specs = specs
        self.by_name = {spec.name: spec for spec in specs}
        self.clock = clock
        # One budget for every process on this store: RUNBASE_RATE_LIMIT is the deployment's.
        self.budget = budget or StoreBudget(
            store, settings.runbase_rate_limit, settings.runbase_rate_window, clock=clock
        )
        self._clients: dict[str, ProviderClient] = dict(clients or {})
        self._signer: WebhookSigner | None = None
        self._worker: Worker | None = None
        # `budget` events being sent, each in a task of its own (`announce_soon`); close() waits for them.
        self._announcing: set[asyncio.Task[None]] = set()
        self.metrics = Metrics()
        self.changes = Changes()  # the dashboard's live pages wait on it
        # When each provider request of this process was answered (monotonic), for the dashboard.
        self._requests: dict[str, deque[float]] = {}
        self._models: Models | None = None
        self._models_read_at = -math.inf  # the clock's monotonic time of the last read
        self._models_stale = False  # a job finished since: read again once MODELS_FRESH has passed

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> Receiver:
        """Build from settings; raises SettingsError or handlers.ConfigError for a user's mistake."""
        logs.register_secrets(settings.secrets())
        logs.register_secrets(_handler_secrets(settings.handlers))
        tables = settings.handlers or [{"name": "log", "type": "log"}]
        specs = build_handlers(tables, clock=kwargs.get("clock", system_clock))
        store = open_store(
            settings.database_url, timeout=settings.store_timeout, pool_size=settings.pg_pool_size
        )
        return cls(settings, store, specs, **kwargs)

    @property
    def signer(self) -> WebhookSigner:
        if self._signer is None:
            s = self.settings
            self._signer = WebhookSigner(s.require_secret(), s.old_secrets, s.token_max_age, clock=self.clock)
        return self._signer

    @property
    def worker(self) -> Worker:
        """Polling and dispatch for this receiver, made on first use."""
        if self._worker is None:
            from receiver.worker import Worker  # the worker drives a Receiver: built here, imported late

            self._worker = Worker(self)
        return self._worker

    def client(self, provider: str) -> ProviderClient:
        spec = registry.get(provider)
        if provider not in self._clients:
            self._clients[provider] = spec.client(
                self.settings,
                budget=self.budget,
                clock=self.clock,
                observe=partial(self._observed, provider),
            )
        return self._clients[provider]

    def _observed(self, provider: str, status_code: int | None) -> None:
        self.metrics.provider_request(provider, status_code)
        self._requests.setdefault(provider, deque(maxlen=REQUESTS_KEPT)).append(self.clock.monotonic())

    def requests_within(self, provider: str, seconds: float) -> int:
        """How many requests this process sent `provider` in the last `seconds`."""
        since = self.clock.monotonic() - seconds
        return sum(1 for moment in self._requests.get(provider, ()) if moment >= since)

    async def open(self) -> None:
        await self.store.open()

    async def close(self) -> None:
        """Release connections, once the `budget` events being sent are sent; `open()` may follow (a
        serverless runtime opens per invocation)."""
        if self._announcing:
            await asyncio.gather(*self._announcing, return_exceptions=True)
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.aclose()
        for spec in self.specs:
            closer = getattr(spec.handler, "aclose", None)
            if closer is not None:
                await closer()
        await self.store.close()

    def routes(self, event: dict[str, Any]) -> list[HandlerRoute]:
        return [HandlerRoute(spec.name, spec.after) for spec in self.specs if spec.matches(event)]

    async def record(self, job_id: str, update: Update, via: str | None) -> Recorded:
        worker = self._worker
        # A report that may end the job: its deliveries are leased to this process's worker, if it takes
        # them now (Worker.promise), and handed to it once committed.
        lease = worker.promise() if worker is not None and update.status.terminal else None
        try:
            recorded = await self.store.record(job_id, update, via, self.clock(), self.routes, lease)
        finally:
            if worker is not None and lease is not None:
                worker.unpromise()
        if recorded.changed:
            self.changes.bump()
        if recorded.terminal:
            if worker is not None:
                worker.hand_off(job_id, recorded.leased)
            self._models_stale = True
            log.info("job.completed", job_id=job_id, status=str(update.status), via=via)
        if recorded.changed and update.cost is not None and recorded.job is not None:
            self.announce_soon(recorded.job.provider)
        return recorded

    def announce_soon(self, provider: str) -> None:
        """`announce_budget` in a task of its own: the report that carried the cost (a webhook, a poll,
        a submit's answer) does not wait on the budget's handlers. Nothing without a budget for it."""
        if not self.settings.daily_budgets.get(provider):
            return
        task = asyncio.get_running_loop().create_task(self._announce(provider))
        self._announcing.add(task)
        task.add_done_callback(self._announcing.discard)

    async def _announce(self, provider: str) -> None:
        try:
            await self.announce_budget(provider)
        except Exception as exc:  # the store failed: a level not noted yet is checked with the next cost,
            # one noted already is sent by a worker when its lease ends
            log.warning("budget.unannounced", provider=provider, error=type(exc).__name__)

    async def announce_budget(self, provider: str) -> None:
        """Send the `budget` events now due for `provider` to the handlers that ask for them (`events =
        ["budget"]`): each level once per day, by whichever process notes it first. What it owes them
        is stored with the note: a handler that fails is retried, and one this process did not reach
        (it stopped first) is sent by a worker when the lease runs out (`Worker.deliver_budget`)."""
        worker, now = self.worker, self.clock()
        for event in await budget_events(self.store, self.settings, provider, now):
            names = [spec.name for spec in self.specs if spec.matches(event)]
            if not await self.store.budget_alert(event, names, now, now + worker.lease(names)):
                continue
            budget = event["budget"]
            log.warning("budget.reached", provider=provider, level=budget["level"])
            owed = [DueBudget(provider, budget["day"], budget["level"], name, 0, event) for name in names]
            await asyncio.gather(*(worker.deliver_budget(due) for due in owed))

    async def completion_models(self, *, fresh: bool = False) -> Models:
        """The completion-time models learned from the store's recent successes. Read again at most
        every MODELS_FRESH seconds after a job of this process finished, and every MODELS_MAX_AGE
        seconds in any case (other processes finish jobs too); `fresh`: now."""
        age = self.clock.monotonic() - self._models_read_at
        stale = self._models_stale and age >= MODELS_FRESH
        if fresh or self._models is None or age >= MODELS_MAX_AGE or stale:
            self._models_stale = False
            self._models_read_at = self.clock.monotonic()
            samples = await self.store.completion_samples(MODEL_HISTORY)
            # A job of a provider that sends webhooks counts as running only up to its last look: its
            # webhook may be lost, and counting the silence since would make the model, and with it the
            # reconciliation poll, later and later while webhooks are lost.
            running = await self.store.running_samples(self.clock(), MODEL_HISTORY, to_last_look=WEBHOOKS)
            self._models = Models.learn(samples, self.settings.expected_seconds, running)
        return self._models

    async def completion_model(self, job: Job) -> Lognormal:
        return (await self.completion_models()).get(Kind.of(job.provider, job.model, job.request))

    async def submit(self, provider: Choice, request: KlingRequest) -> Job:
        job, _ = await self.submit_once(provider, request)
        return job

    async def submit_once(
        self, provider: Choice, request: KlingRequest, idempotency_key: str | None = None
    ) -> tuple[Job, bool]:
        """`submit`, and whether it made the job. With an `idempotency_key` (a client's retry after a
        lost answer), the key names the job: a repeat returns the job the first call made, and never
        sends it again; the same key with another request is an IdempotencyConflict."""
        if idempotency_key is None:
            return await self._submit(provider, request, new_job_id()), True
        job_id = keyed_job_id(self.settings.require_secret(), idempotency_key)
        try:
            existing = await self.get_job(job_id)
        except NoSuchJob:
            try:
                return await self._submit(provider, request, job_id), True
            except _Taken:
                existing = await self.get_job(job_id)
        if (existing.request, existing.metadata) != (request.params(), request.metadata):
            raise IdempotencyConflict("Idempotency-Key was used before with a different request")
        return existing, False

    async def _submit(self, provider: Choice, request: KlingRequest, job_id: str) -> Job:
        """Record the job, then submit it. `provider`: a name, "auto" (RECEIVER_PROVIDER_ORDER) or a
        list, tried in order (see receiver.failover). A submit the rate budget holds back, or the
        provider refuses with 429, is `queued` for the worker; a refused job ends `failed` (its handlers
        hear of it) and the provider's error is raised; a parameter no provider in the choice can take
        is refused before anything is recorded."""
        now = self.clock()
        names = providers_of(provider, self.settings)
        skipped: list[dict[str, Any]] = []
        usable: list[tuple[str, SpendLimit | None]] = []
        refusal: UnsupportedParameter | BudgetExceeded | None = None
        for name in names:
            try:
                self.client(name).check(request)
                usable.append((name, await check_budget(self.store, self.settings, name, now)))
            except (UnsupportedParameter, BudgetExceeded) as exc:
                refusal = refusal or exc
                skipped.append(attempt(name, "not_sent", str(exc), now))
        deadline = now + timedelta(seconds=self.settings.job_timeout)
        for index, (name, limit) in enumerate(usable):
            job = Job(
                id=job_id,
                provider=name,
                status=JobStatus.PENDING,
                request=request.params(),
                metadata=request.metadata,
                created_at=now,
                webhook_url=self._webhook_url(job_id, name),
                attempts=skipped,
                fallbacks=[later for later, _ in usable[index + 1 :]],
            )
            try:
                created = await self.store.create_job(
                    job, deadline, now + timedelta(seconds=self.settings.submit_lease), limit
                )
            except OverBudget as exc:  # another process's job took the room since the check above
                assert limit is not None
                exceeded = over(name, limit, exc.committed)
                refusal = refusal or exceeded
                skipped.append(attempt(name, "not_sent", str(exceeded), now))
                continue
            if not created:
                raise _Taken(job_id)  # the same Idempotency-Key, sent twice at once: the other sends it
            break
        else:
            assert refusal is not None  # every name was checked, and each refused
            raise refusal
        try:
            await self.send(job)
        finally:
            self.changes.bump()
        return await self.get_job(job.id)

    async def submit_request(self, data: dict[str, Any]) -> Job:
        job, _ = await self.submit_request_once(data)
        return job

    async def submit_request_once(
        self, data: dict[str, Any], idempotency_key: str | None = None
    ) -> tuple[Job, bool]:
        """A submit as POST /jobs and the dashboard's form take it: `provider` plus the Kling fields,
        validated by the one set of rules; and whether it made the job (see `submit_once`). Raises
        InvalidSubmit (every bad field, or a parameter no chosen provider can take), or what `submit`
        raises."""
        data = dict(data)
        errors: dict[str, str] = {}
        provider: Choice = ""
        try:
            provider = parse_choice(data.pop("provider", None), self.settings.provider)
        except UnknownProvider as exc:
            errors["provider"] = str(exc)
        try:
            kling = KlingRequest.from_dict(data)
        except ValidationError as exc:
            errors.update(exc.errors)
        if errors:
            raise InvalidSubmit(errors)
        try:
            return await self.submit_once(provider, kling, idempotency_key)
        except UnsupportedParameter as exc:
            raise InvalidSubmit({exc.parameter: exc.message}) from None

    def _webhook_url(self, job_id: str, provider: str) -> str | None:
        if not registry.get(provider).sends_webhooks:
            return None
        return self.signer.url(self.settings.public_url, job_id, provider)

    async def send(self, job: Job) -> bool:
        """Submit a recorded `pending` job: its first submit, a queued one, or again (the same body and
        Idempotency-Key) one whose answer was lost or whose process stopped before the answer. True once
        a provider took it; False when it is queued, or `unknown` to be sent again. A refusal goes to the
        next provider when the job has one and the refusal allows; otherwise it is recorded (the job ends
        `failed`) and raised."""
        client = self.client(job.provider)
        request = KlingRequest(**job.request, metadata=job.metadata)
        try:
            status = await client.submit(job.id, request, job.webhook_url, within=self.settings.submit_wait)
        except BudgetBusy as exc:
            wait = self.settings.submit_wait if exc.wait is None else exc.wait
            return await self._hold(job, wait, job.refusals, f"{job.provider}: rate budget full")
        except ProviderError as exc:
            return await self._not_taken(job, exc)
        await self._accepted(job, status)
        return True

    async def _not_taken(self, job: Job, exc: ProviderError) -> bool:
        """A submit that did not come back accepted: lost (the job is `unknown`, or `submit_unknown`
        where it cannot be sent twice; never failed over), refused with 429 (held), refused where the
        next provider may take it (failed over), or refused (recorded and raised)."""
        if answer_lost(exc):
            return await self._unknown(job, exc)
        if isinstance(exc, RateLimited):
            refusals = job.refusals + 1
            wait = exc.retry_after
            if wait is None:
                wait = retry_delay(refusals, SUBMIT_RETRY_BASE, SUBMIT_RETRY_MAX)
            return await self._hold(job, wait, refusals, str(exc))
        if job.fallbacks and may_fail_over(exc):
            return await self._fail_over(job, "refused", str(exc))
        log.warning("job.refused", job_id=job.id, provider=job.provider, error=str(exc))
        await self._note(job, "refused", str(exc))
        await self.record(job.id, Update(JobStatus.FAILED, error=exc.to_job_error()), via=None)
        raise exc

    async def _hold(self, job: Job, wait: float, refusals: int, why: str) -> bool:
        """Throttled: queued for `wait` seconds, or, when that would hold the job back longer than
        RECEIVER_FAILOVER_WAIT from its creation and another provider is left, sent there now."""
        held = (self.clock() - job.created_at).total_seconds() + wait
        if job.fallbacks and held > self.settings.failover_wait:
            return await self._fail_over(job, "throttled", why)
        await self._queue(job, wait, refusals)
        return False

    async def _fail_over(self, job: Job, outcome: str, why: str) -> bool:
        """This provider certainly made nothing: the job, same id, goes to the next one."""
        before = job.provider
        job.attempts.append(attempt(before, outcome, why, self.clock()))
        job.provider, job.fallbacks = job.fallbacks[0], job.fallbacks[1:]
        job.webhook_url = self._webhook_url(job.id, job.provider)
        job.refusals = 0
        await self.store.fail_over(job.id, job.provider, job.webhook_url, job.fallbacks, job.attempts)
        log.warning("job.failover", job_id=job.id, provider=before, to=job.provider, error=why)
        return await self.send(job)

    async def _note(self, job: Job, outcome: str, answer: str) -> None:
        job.attempts.append(attempt(job.provider, outcome, answer, self.clock()))
        await self.store.note_attempts(job.id, job.attempts)

    async def _unknown(self, job: Job, exc: ProviderError) -> bool:
        """The submit was sent and its answer lost. With an idempotency key the job is `unknown` and sent
        again (the same key names the job the lost submit made, or makes the only one); without one a
        second submit could buy a second run, so the job ends `submit_unknown` and the error is raised."""
        await self._note(job, "unknown", str(exc))
        if not registry.get(job.provider).idempotent_submit:
            await self.lose(job, str(exc))
            raise exc
        refusals = job.refusals + 1
        wait = retry_delay(refusals, SUBMIT_RETRY_BASE, SUBMIT_RETRY_MAX)
        at = self.clock() + timedelta(seconds=wait)
        await self.store.queue_job(job.id, at, refusals, JobStatus.UNKNOWN)
        log.warning(
            "job.unknown", job_id=job.id, provider=job.provider, error=str(exc), resubmit_in=round(wait, 3)
        )
        return False

    async def _accepted(self, job: Job, status: ProviderStatus) -> None:
        """The provider took the job: record its id. The write is retried while the store fails (the
        run exists and is paid for; a job left `pending` would be sent again or given up on)."""
        submitted = self.clock()
        spec = registry.get(job.provider)
        first_poll = spec.next_poll_at(submitted, submitted, await self.completion_model(job))
        job.attempts.append(attempt(job.provider, "accepted", status.provider_job_id, submitted))
        for write in range(1, ACCEPT_WRITES + 1):
            try:
                await self.store.mark_submitted(
                    job.id, status.provider_job_id, submitted, first_poll, job.attempts, status.cost
                )
                break
            except Exception as exc:  # the store is down; the provider's job id must not be lost
                fields = {"job_id": job.id, "provider": job.provider, "error": type(exc).__name__}
                if write == ACCEPT_WRITES:
                    log.error("job.accept_unrecorded", provider_job_id=status.provider_job_id, **fields)
                    raise
                wait = retry_delay(write, ACCEPT_RETRY_BASE, ACCEPT_RETRY_MAX)
                log.warning("job.accept_write_failed", attempt=write, retry_in=round(wait, 3), **fields)
                await self.clock.sleep(wait)
        if status.status.terminal or status.status is JobStatus.RUNNING:
            await self.record(job.id, confirmed(status), via="poll")
        elif status.cost is not None:
            self.announce_soon(job.provider)
        log.info(
            "job.submitted", job_id=job.id, provider=job.provider, provider_job_id=status.provider_job_id
        )

    async def _queue(self, job: Job, wait: float, refusals: int) -> None:
        await self.store.queue_job(job.id, self.clock() + timedelta(seconds=wait), refusals)
        log.info("job.queued", job_id=job.id, provider=job.provider, wait=round(wait, 3), refusals=refusals)

    async def lose(self, job: Job, why: str | None = None) -> Recorded:
        """A job whose submit lost its answer, at a provider that cannot take it twice, ends `failed`."""
        log.warning("job.submit_unknown", job_id=job.id, provider=job.provider, error=why)
        return await self.record(
            job.id, Update(JobStatus.FAILED, error=submit_unknown(job.provider)), via=None
        )

    async def time_out(self, job_id: str) -> Recorded:
        seconds = self.settings.job_timeout
        error = JobError(code="timeout", message=f"no final status within {seconds:g} s of submit")
        return await self.record(job_id, Update(JobStatus.FAILED, error=error), via=None)

    async def accept_webhook(
        self, provider: str, token: str, headers: Mapping[str, str], read_body: Callable[[], Awaitable[bytes]]
    ) -> dict[str, Any]:
        """Verify a provider's webhook and record it durably; the answer's JSON body. Raises
        WebhookRefused; `read_body` runs only once the token is good (its own errors pass through)."""
        try:
            claims = self.signer.verify(token, provider)
        except TokenError as exc:
            raise WebhookRefused(401, str(exc)) from None
        spec = registry.get(provider)
        body = await read_body()
        if not spec.verify_webhook(self.settings, headers, body):
            raise WebhookRefused(401, "X-Webhook-Signature does not match the body")
        try:
            data = parse_object(body)
            status = spec.read_webhook(data)
        except (BadJSON, ReportRefused) as exc:
            raise WebhookRefused(400, str(exc)) from None
        if status is None:
            if not await self.store.poll_soon(claims.job_id, self.clock()):
                raise WebhookRefused(404, "no such job")
            log.info("webhook.unusable", job_id=claims.job_id, provider=provider)
            return {"ok": True, "confirm": "poll"}
        update = update_from(status)
        if update.status.terminal:
            recorded = await self.record(claims.job_id, update, via="webhook")
            status_after = recorded.job.status if recorded.job is not None else None
            outcome = Progressed(status_after, changed=recorded.changed, conflict=recorded.conflict)
        else:  # a progress report: the lean road, sharing its commit with the reports beside it
            outcome = await self.store.record_progress(claims.job_id, update)
        if outcome.status is None:
            raise WebhookRefused(404, "no such job")
        if outcome.conflict:
            if await self.store.find_job(provider, status.provider_job_id) is not None:
                raise WebhookRefused(401, "webhook token belongs to another job")
            raise WebhookRefused(400, "body names another job (jobId)")
        return {"ok": True, "status": str(outcome.status), "duplicate": not outcome.changed}

    async def get_job(self, job_id: str) -> Job:
        job = await self.store.get_job(job_id)
        if job is None:
            raise NoSuchJob(f"no job {job_id!r}")
        return job

    async def list_jobs(self, status: str | None = None, limit: int = 100) -> list[Job]:
        return await self.store.list_jobs(status, limit)

    async def replay(self, job_id: str, handler: str | None = None) -> Replayed:
        """Make a finished job's event due again; raises NoSuchJob, NotFinished, or SettingsError for a
        handler that is not configured."""
        job = await self.get_job(job_id)
        if job.status not in TERMINAL:
            raise NotFinished(f"job {job.id} is {job.status}: only a finished job has an event to replay")
        if handler is not None and handler not in self.by_name:
            raise SettingsError(f"no handler named {handler!r} is configured")
        count = await self.store.replay(job_id, self.routes, self.clock(), handler)
        self.changes.bump()
        return Replayed(count, job.event_id)

    async def replay_budget_event(self, event_id: str, handler: str | None = None) -> Replayed:
        """Make a `budget` event (by its id) due again for the handlers that ask for it now, or for
        `handler`; raises NoSuchJob when no level was noted with that event, SettingsError for a
        handler that is not configured or does not take `budget` events."""
        event = await self.store.budget_event(event_id)
        if event is None:
            raise NoSuchJob(f"no budget event {event_id!r} (a job's event is replayed by the job's id)")
        names = [spec.name for spec in self.specs if spec.matches(event)]
        if handler is not None:
            if handler not in self.by_name:
                raise SettingsError(f"no handler named {handler!r} is configured")
            if handler not in names:
                raise SettingsError(f"handler {handler!r} does not take budget events")
            names = [handler]
        count = await self.store.replay_budget(event, names, self.clock())
        self.changes.bump()
        return Replayed(count, event_id)

    async def jobs_page(
        self, status: str | None, provider: str | None, page: int, size: int = PAGE_SIZE
    ) -> JobsPage:
        """Page `page` (from 0) of the newest jobs, filtered by status and provider."""
        wanted = MAX_LISTED if provider else min(MAX_LISTED, (page + 1) * size + 1)
        listed = await self.store.list_jobs(status, wanted)
        jobs = [job for job in listed if not provider or job.provider == provider]
        return JobsPage(jobs[page * size : (page + 1) * size], page, len(jobs) > (page + 1) * size)

    async def dead_letters(self) -> list[DeadLetter]:
        return [DeadLetter(*row) for row in await self.store.dead_deliveries()]

    async def budget_letters(self) -> list[BudgetLetter]:
        return [BudgetLetter(*row) for row in await self.store.dead_budget_deliveries()]

    async def replay_dead(self) -> int:
        """Make every dead delivery due again (each for its own handler), `budget` events' too; how
        many."""
        count = await self.store.replay_budget_dead(self.clock())
        if count:
            self.changes.bump()
        for letter in await self.dead_letters():
            with contextlib.suppress(NoSuchJob, NotFinished, SettingsError):  # gone or unconfigured now
                count += (await self.replay(letter.job_id, letter.handler)).count
        return count

    async def overview(self) -> Health:
        """The dashboard's budget and health page: what the store holds now, and this process's view
        (the requests it sent to each provider that spends the rate budget, RUNBASE_RATE_LIMIT)."""
        counts = await self.store.counts()
        jobs, deliveries, owed = counts["jobs"], counts["deliveries"], counts["budget_deliveries"]
        s = self.settings
        last = self.worker.last_round
        return Health(
            budgets=[
                BudgetUse(
                    name,
                    self.requests_within(name, s.runbase_rate_window),
                    s.runbase_rate_limit,
                    s.runbase_rate_window,
                    self.requests_within(name, RECENT),
                )
                for name in registry.NAMES
                if registry.get(name).spends_budget
            ],
            spending=await self._spending(),
            queued_submits=jobs.get(str(JobStatus.QUEUED), 0),
            polling=jobs.get(str(JobStatus.SUBMITTED), 0) + jobs.get(str(JobStatus.RUNNING), 0),
            next_due=await self.store.next_due(),
            last_round_ago=None if last is None else self.clock.monotonic() - last,
            retrying=deliveries.get("retrying", 0) + owed.get("retrying", 0),
            dead=deliveries.get("dead", 0) + owed.get("dead", 0),
            handlers=handler_rates(await self.store.list_jobs(None, MAX_LISTED), list(self.by_name)),
        )

    async def _spending(self) -> list[Spend]:
        """Today's cost per provider that has a daily budget or spent something today."""
        today = day_start(self.clock())
        spending = []
        for name in registry.NAMES:
            spent, open_jobs = await self.store.spent_since(name, today)
            budget = self.settings.daily_budgets.get(name)
            if spent or open_jobs or budget is not None:
                spending.append(Spend(name, spent, registry.cost_unit(name), budget, open_jobs))
        return spending

    async def tick(self) -> dict[str, int]:
        """One round of polling and dispatch."""
        return await self.worker.tick()

    async def health(self, *, with_worker: bool) -> list[str]:
        """Why this receiver is unhealthy, or nothing. `with_worker`: its worker loop runs in this
        process and must have finished a round within RECEIVER_WORKER_STALE_AFTER seconds."""
        problems = []
        try:
            async with asyncio.timeout(STORE_PING_TIMEOUT):
                await self.store.ping()
        except Exception as exc:  # any failure to answer is the answer; never the URL or a secret
            problems.append(f"store unreachable ({type(exc).__name__})")
        if with_worker:
            last = self.worker.last_round
            bound = self.settings.worker_stale_after
            if last is None or self.clock.monotonic() - last > bound:
                problems.append(f"worker has not finished a round in {bound:g} s")
        return problems

    async def render_metrics(self) -> bytes:
        """The Prometheus text: the store's counts read now, plus this process's counters."""
        counts = await self.store.counts()
        today = {
            (line.group, line.unit): line.total
            for line in sum_costs(await self.store.costs_since(day_start(self.clock())))
        }
        budgets = {
            (name, registry.get(name).cost_unit): limit for name, limit in self.settings.daily_budgets.items()
        }
        models = await self.completion_models(fresh=True)
        jobs = await self.store.job_counts()
        return self.metrics.render(jobs, counts["deliveries"], today, budgets, models)


def submit_unknown(provider: str) -> JobError:
    return JobError(
        code="submit_unknown",
        message=(
            f"the answer to the submit was lost, so whether {provider} started a run is unknown; "
            f"{provider} has no idempotency key, so the job is not sent again (look for a run at {provider})"
        ),
    )


def confirmed(status: ProviderStatus) -> Update:
    """A provider's answer to a status read as a store update. `succeeded` without an output URL is
    not taken as final (as on the webhook road): the job stays running and the next read confirms."""
    if status.status is JobStatus.SUCCEEDED and not status.output_urls:
        return Update(
            JobStatus.RUNNING,
            provider_job_id=status.provider_job_id,
            progress=status.progress,
            cost=status.cost,
        )
    return update_from(status)


def update_from(status: ProviderStatus) -> Update:
    """A provider's report as a store update."""
    return Update(
        status=status.status,
        provider_job_id=status.provider_job_id,
        progress=status.progress,
        output_urls=tuple(status.output_urls),
        error=status.error,
        cost=status.cost,
        finished_at=status.finished_at,
    )


def _handler_secrets(tables: list[dict[str, Any]]) -> list[str]:
    """Handler values that must not be logged: secret keys whole, and credentials inside any URL."""
    found: list[str] = []
    for table in tables:
        for key, value in table.items():
            if not isinstance(value, str):
                continue
            if key in SECRET_KEYS:
                found.append(value)
            elif "://" in value:
                parts = urlsplit(value)
                found += [p for p in (parts.password, parts.query) if p]
    return found
