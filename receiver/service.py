"""The receiver: store, provider clients, handlers and signer wired together, shared by app and CLI."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import structlog

from handlers import HandlerSpec, build_handlers
from receiver import logs
from receiver.clock import Clock, system_clock
from receiver.config import Settings, SettingsError
from receiver.events import Job, JobError, JobStatus, new_job_id
from receiver.providers import make_client
from receiver.providers.base import ProviderClient, ProviderError, ProviderStatus
from receiver.providers.ratelimit import LocalBudget, RateBudget
from receiver.request import KlingRequest
from receiver.schedule import next_poll_at
from receiver.signing import WebhookSigner
from receiver.store import Recorded, Route, Store, Update, open_store

log = structlog.get_logger()

PROVIDERS = ("apiframe", "runbase")
SECRET_KEYS = ("webhook_url", "secret", "token", "password", "api_key")


class UnknownProvider(ValueError):
    pass


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
        self.budget = budget or LocalBudget(
            limit=settings.runbase_rate_limit, window=settings.runbase_rate_window
        )
        self._clients: dict[str, ProviderClient] = dict(clients or {})
        self._signer: WebhookSigner | None = None
        self._wake: Callable[[], None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> Receiver:
        """Build from settings; raises SettingsError or handlers.ConfigError for a user's mistake."""
        logs.register_secrets(settings.secrets())
        logs.register_secrets(_handler_secrets(settings.handlers))
        tables = settings.handlers or [{"name": "log", "type": "log"}]
        return cls(settings, open_store(settings.database_url), build_handlers(tables), **kwargs)

    @property
    def signer(self) -> WebhookSigner:
        if self._signer is None:
            s = self.settings
            self._signer = WebhookSigner(s.require_secret(), s.old_secrets, s.token_max_age)
        return self._signer

    def client(self, provider: str) -> ProviderClient:
        if provider not in PROVIDERS:
            raise UnknownProvider(f"provider must be one of {', '.join(PROVIDERS)}")
        if provider not in self._clients:
            options: dict[str, Any] = {}
            if provider == "apiframe":
                options["webhook_field"] = self.settings.apiframe_webhook_field
            else:
                options["budget"] = self.budget
            self._clients[provider] = make_client(
                provider,
                api_key=self.settings.api_key(provider),
                base_url=self.settings.base_url(provider),
                **options,
            )
        return self._clients[provider]

    async def open(self) -> None:
        await self.store.open()

    async def close(self) -> None:
        """Release connections; `open()` may follow (a serverless runtime opens per invocation)."""
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.aclose()
        for spec in self.specs:
            closer = getattr(spec.handler, "aclose", None)
            if closer is not None:
                await closer()
        await self.store.close()

    def on_record(self, wake: Callable[[], None]) -> None:
        """Called after a completion is committed: the in-process worker wakes at once."""
        self._wake = wake

    def routes(self, event: dict[str, Any]) -> list[Route]:
        return [Route(spec.name, spec.after) for spec in self.specs if spec.matches(event)]

    async def record(self, job_id: str, update: Update, via: str | None) -> Recorded:
        recorded = await self.store.record(job_id, update, via, self.clock(), self.routes)
        if recorded.terminal:
            log.info("job.completed", job_id=job_id, status=str(update.status), via=via)
            if self._wake is not None:
                self._wake()
        return recorded

    async def submit(self, provider: str, request: KlingRequest) -> Job:
        """Record the job, then submit it. A refused job ends `failed` (its handlers hear of it) and the
        provider's error is raised; a parameter the provider cannot take is refused before anything."""
        client = self.client(provider)
        client.check(request)
        webhook_signer = self.signer if provider == "apiframe" else None
        now = self.clock()
        job = Job(
            id=new_job_id(),
            provider=provider,
            status=JobStatus.PENDING,
            request=request.params(),
            metadata=request.metadata,
            created_at=now,
        )
        await self.store.create_job(job, now + timedelta(seconds=self.settings.job_timeout))
        webhook_url = (
            webhook_signer.url(self.settings.public_url, job.id, provider) if webhook_signer else None
        )
        try:
            status = await client.submit(job.id, request, webhook_url)
        except ProviderError as exc:
            log.warning("job.refused", job_id=job.id, provider=provider, error=str(exc))
            await self.record(job.id, Update(JobStatus.FAILED, error=exc.to_job_error()), via=None)
            raise
        submitted = self.clock()
        first_poll = next_poll_at(provider, submitted, submitted, self.settings.expected_seconds)
        await self.store.mark_submitted(job.id, status.provider_job_id, submitted, first_poll)
        if status.status.terminal or status.status is JobStatus.RUNNING:
            await self.record(job.id, update_from(status), via="poll")
        log.info("job.submitted", job_id=job.id, provider=provider, provider_job_id=status.provider_job_id)
        stored = await self.store.get_job(job.id)
        assert stored is not None
        return stored

    async def time_out(self, job_id: str) -> Recorded:
        seconds = self.settings.job_timeout
        error = JobError(code="timeout", message=f"no final status within {seconds:g} s of submit")
        return await self.record(job_id, Update(JobStatus.FAILED, error=error), via=None)

    async def replay(self, job_id: str, handler: str | None = None) -> int:
        if handler is not None and handler not in self.by_name:
            raise SettingsError(f"no handler named {handler!r} is configured")
        count = await self.store.replay(job_id, self.routes, self.clock(), handler)
        if count and self._wake is not None:
            self._wake()
        return count


def update_from(status: ProviderStatus) -> Update:
    """A provider's report as a store update."""
    return Update(
        status=status.status,
        provider_job_id=status.provider_job_id,
        progress=status.progress,
        output_urls=tuple(status.output_urls),
        error=status.error,
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
