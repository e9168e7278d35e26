"""A local Apiframe (v2 video API, Kling 3.0): jobs, idempotency, credits and signed webhooks.

Follows PROVIDERS.md. Job status is computed on read from the time since submit; webhooks go out
from one asyncio task per job, through one shared httpx client.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import httpx
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from receiver.clock import Clock, system_clock
from receiver.emulators.common import (
    BadRequestBody,
    Emulator,
    Injection,
    RequestIdMiddleware,
    SimulatedJob,
    base_url,
    check_choice,
    check_number,
    is_http_url,
    key_digest,
    processing_time,
    read_json_object,
)
from receiver.events import iso

MODEL = "kling-3.0"
MAX_PROMPT = 4000
MAX_IDEMPOTENCY_KEY = 255
IDEMPOTENCY_TTL = 24 * 3600.0
KLING_PARAMS = ("start_image", "mode", "generate_audio", "end_image", "negative_prompt", "multi_prompt")
MODES = ("standard", "pro", "4k")
EVENTS = ("progress", "completed", "failed")
WEBHOOK_MODES = ("deliver", "drop", "duplicate", "delay", "early")
WEBHOOK_FIELDS = ("webhookUrl", "webhook_url")
RESULT_SHAPES = ("videoUrl", "videos", "string")
PROGRESS_SHARES = (0.4, 0.75)  # points in processing at which progress webhooks go out
RETRY_WAITS = (0.2, 0.5)  # waits before the second and third attempt of a webhook POST
WEBHOOK_TIMEOUT = 5.0
FAILURE_MESSAGE = "Generation failed: the model could not produce a video for this prompt"

ERROR_MESSAGES = {
    400: "Invalid request body",
    401: "Invalid API key",
    402: "Insufficient credits",
    403: "Forbidden",
    404: "Job not found",
    409: "Idempotency-Key was already used with a different request body",
    429: "Rate limit exceeded",
    500: "Internal server error",
    503: "Service unavailable",
}


def sign(body: bytes, api_key: str) -> str:
    """The `X-Webhook-Signature` value: HMAC-SHA256 of the raw body keyed with SHA-256(api key)."""
    secret = hashlib.sha256(api_key.encode()).digest()
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def validate_submit(body: dict[str, Any], webhook_field: str) -> list[dict[str, str]]:
    """Problems with a submit body, one `{"field", "message"}` per bad field (the OpenAPI schema)."""
    problems: list[dict[str, str]] = []

    def bad(field: str, message: str) -> None:
        problems.append({"field": field, "message": message})

    allowed = {"prompt", "model", "klingParams", webhook_field, "webhookEvents"}
    for name in sorted(set(body) - allowed):
        bad(name, "unknown field")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not 1 <= len(prompt) <= MAX_PROMPT:
        bad("prompt", f"required, a string of 1 to {MAX_PROMPT} characters")
    if body.get("model") != MODEL:
        bad("model", f"required, must be {MODEL!r}")
    if webhook_field in body and not is_http_url(body[webhook_field]):
        bad(webhook_field, "must be an http(s) URL")
    events = body.get("webhookEvents", list(EVENTS))
    if not isinstance(events, list) or any(event not in EVENTS for event in events):
        bad("webhookEvents", f"must be a list drawn from {', '.join(EVENTS)}")
    params = body.get("klingParams", {})
    if not isinstance(params, dict):
        bad("klingParams", "must be an object")
        return problems
    for name in sorted(set(params) - set(KLING_PARAMS)):
        bad(f"klingParams.{name}", "unknown field")
    if "mode" in params and params["mode"] not in MODES:
        bad("klingParams.mode", f"must be one of {', '.join(MODES)}")
    if "generate_audio" in params and not isinstance(params["generate_audio"], bool):
        bad("klingParams.generate_audio", "must be a boolean")
    for name in ("start_image", "end_image"):
        if name in params and not is_http_url(params[name]):
            bad(f"klingParams.{name}", "must be an http(s) URL")
    for name in ("negative_prompt", "multi_prompt"):
        if name in params and not isinstance(params[name], str):
            bad(f"klingParams.{name}", "must be a string")
    return problems


@dataclass
class ApiframeJob(SimulatedJob):
    """One submitted job, with the settings it was submitted under (`key`: the API key itself)."""

    webhook_url: str | None
    events: frozenset[str]
    webhook_mode: str
    webhook_delay: float
    progress_webhooks: bool
    result_shape: str
    webhook_status: str | None = None
    refunded: bool = False

    def status(self) -> tuple[str, int]:
        share = self.share()
        if share is None:
            return "QUEUED", 0
        if share >= 1.0:
            return ("FAILED", 0) if self.fails else ("COMPLETED", 100)
        return "PROCESSING", min(99, max(1, int(share * 100)))

    def result(self) -> Any:
        url = self.file_url
        if self.result_shape == "videos":
            return {"videos": [url]}
        if self.result_shape == "string":
            return url
        return {"videoUrl": url}

    def to_json(self, expire_after: float) -> dict[str, Any]:
        status, progress = self.status()
        final = status in ("COMPLETED", "FAILED")
        return {
            "id": self.id,
            "status": status,
            "model": MODEL,
            "progress": progress,
            "result": self.result() if status == "COMPLETED" else None,
            "error": FAILURE_MESSAGE if status == "FAILED" else None,
            "creditCost": 0 if self.refunded else self.cost,
            "webhookStatus": self.webhook_status,
            "createdAt": iso(self.created_at),
            "completedAt": iso(self.completed_at) if final else None,
            "expired": status == "COMPLETED" and self.elapsed() - self.delay > expire_after,
            "input": self.input,
        }

    def webhook_body(self, event: str) -> dict[str, Any]:
        if event == "completed":
            return {
                "event": "completed",
                "jobId": self.id,
                "status": "COMPLETED",
                "progress": 100,
                "result": self.result(),
                "model": MODEL,
                "creditCost": self.cost,
                "completedAt": iso(self.completed_at),
            }
        if event == "failed":
            return {
                "event": "failed",
                "jobId": self.id,
                "status": "FAILED",
                "error": FAILURE_MESSAGE,
                "model": MODEL,
            }
        return {
            "event": "progress",
            "jobId": self.id,
            "status": "PROCESSING",
            "progress": self.status()[1],
            "model": MODEL,
        }


class ApiframeEmulator(Emulator):
    """Apiframe on loopback. `api_key=None` accepts any non-empty `X-API-Key`.

    Webhook modes: deliver (once), drop (never), duplicate (final webhook twice), delay (final webhook
    `webhook_delay` s late), early (the job completes at once and its final webhook is answered before
    the submit is). A failed job's credits come back when its failure is first observed. `submit_hold`
    answers a submit that many seconds after it made the job. The request log carries each request's
    `Idempotency-Key`.
    """

    knobs = (
        "api_key", "delay", "failure_rate", "webhook", "webhook_delay", "progress_webhooks",
        "webhook_field", "result_shape", "credits", "credit_cost", "expire_after", "submit_hold", "seed",
    )  # fmt: skip
    middleware = (Middleware(RequestIdMiddleware),)

    def __init__(
        self,
        *,
        api_key: str | None = None,
        delay: float = 5.0,
        failure_rate: float = 0.0,
        webhook: str = "deliver",
        webhook_delay: float = 0.0,
        progress_webhooks: bool = True,
        webhook_field: str = "webhookUrl",
        result_shape: str = "videoUrl",
        credits: float = 1000.0,
        credit_cost: float = 10.0,
        expire_after: float = 24 * 3600.0,
        submit_hold: float = 0.0,
        seed: int | None = None,
        clock: Clock = system_clock,
    ) -> None:
        self.api_key = api_key
        self.delay = delay
        self.failure_rate = failure_rate
        self.webhook = webhook
        self.webhook_delay = webhook_delay
        self.progress_webhooks = progress_webhooks
        self.webhook_field = webhook_field
        self.result_shape = result_shape
        self.credits = credits
        self.credit_cost = credit_cost
        self.expire_after = expire_after
        self.submit_hold = submit_hold
        self.validate()
        self.webhooks_sent: list[dict[str, Any]] = []
        self.jobs: dict[str, ApiframeJob] = {}
        self._idempotency: dict[tuple[str, str], tuple[str, str, float, dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None
        super().__init__(seed, clock)

    def validate(self) -> None:
        if self.api_key is not None and not (isinstance(self.api_key, str) and self.api_key):
            raise ValueError("api_key must be a non-empty string or null")
        check_number("delay", self.delay, 0)
        check_number("failure_rate", self.failure_rate, 0, 1)
        check_choice("webhook", self.webhook, WEBHOOK_MODES)
        check_number("webhook_delay", self.webhook_delay, 0)
        if not isinstance(self.progress_webhooks, bool):
            raise ValueError("progress_webhooks must be true or false")
        check_choice("webhook_field", self.webhook_field, WEBHOOK_FIELDS)
        check_choice("result_shape", self.result_shape, RESULT_SHAPES)
        check_number("credits", self.credits, 0)
        check_number("credit_cost", self.credit_cost, 0)
        check_number("expire_after", self.expire_after, 0)
        check_number("submit_hold", self.submit_hold, 0)

    def api_routes(self) -> list[BaseRoute]:
        return [
            Route("/v2/videos/generate", self.api(self._submit), methods=["POST"]),
            Route("/v2/jobs/{job_id}", self.api(self._get_job)),
        ]

    def control_routes(self) -> list[BaseRoute]:
        return [Route("/_emulator/webhooks", self._webhooks)]

    def inject(
        self, status: int, count: int = 1, retry_after: float | None = None, *, seconds: float | None = None
    ) -> None:
        """The next `count` API requests (or, with `seconds`, every API request for that long) answer
        `status` with its documented body."""
        if retry_after is not None:
            check_number("retry_after", retry_after, 0)
        self._queue(Injection(status=status, remaining=count, retry_after=retry_after), seconds)

    def error_response(self, injection: Injection) -> Response:
        status = injection.status
        message = ERROR_MESSAGES.get(status) or HTTPStatus(status).phrase
        extra: dict[str, Any] = {}
        if status == 400:
            extra["details"] = []
        elif status == 402:
            extra = {"creditsRequired": self.credit_cost, "creditsAvailable": self.credits}
        response = error(status, message, **extra)
        if status == 429 or injection.retry_after is not None:
            wait = 1 if injection.retry_after is None else injection.retry_after
            response.headers["Retry-After"] = format(wait, "g")
        return response

    def log_entry(self, request: Request, status: int) -> dict[str, Any]:
        entry = super().log_entry(request, status)
        if request.method == "POST":
            entry["idempotency_key"] = request.headers.get("idempotency-key")
        return entry

    def file_available(self, name: str) -> bool:
        job = self.jobs.get(name)
        return job is None or not job.to_json(self.expire_after)["expired"]

    # -- the API -------------------------------------------------------------------------------------

    def _authenticate(self, request: Request) -> str | Response:
        key = request.headers.get("x-api-key", "")
        if not key:
            return error(401, "Missing API key: send it in the X-API-Key header")
        if self.api_key is not None and not hmac.compare_digest(key.encode(), self.api_key.encode()):
            return error(401, "Invalid API key")
        return key

    async def _submit(self, request: Request) -> Response:
        key = self._authenticate(request)
        if isinstance(key, Response):
            return key
        idempotency_key = request.headers.get("idempotency-key")
        if idempotency_key is not None and not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
            return error(400, f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
        try:
            body = await read_json_object(request)
        except BadRequestBody as exc:
            return error(400, f"Invalid request body: {exc}")
        problems = validate_submit(body, self.webhook_field)
        if problems:
            summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
            return error(400, f"Invalid request body: {summary}", details=problems)
        fingerprint = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        if idempotency_key is not None:
            replay = self._replay(key, idempotency_key, fingerprint)
            if replay is not None:
                return replay
        self._refund_failures()
        if self.credits < self.credit_cost:
            return error(
                402,
                "Insufficient credits",
                creditsRequired=self.credit_cost,
                creditsAvailable=self.credits,
            )
        job = self._create(request, key, body)
        answer = {"jobId": job.id, "status": "QUEUED"}
        if idempotency_key is not None:
            self._idempotency[(key_digest(key), idempotency_key)] = (
                fingerprint, job.id, self.clock.monotonic(), answer,
            )  # fmt: skip
        if job.webhook_mode == "early":
            await self._send_final(job)
        elif job.webhook_url:
            self._start(self._follow(job))
        if self.submit_hold:
            # The job exists and its key is spent; the answer is late (a lost answer, when the caller dies).
            await self.clock.sleep(self.submit_hold)
        return JSONResponse(answer, status_code=202)

    def _replay(self, key: str, idempotency_key: str, fingerprint: str) -> Response | None:
        entry = self._idempotency.get((key_digest(key), idempotency_key))
        if entry is None or self.clock.monotonic() - entry[2] > IDEMPOTENCY_TTL:
            return None
        if entry[0] != fingerprint:
            return error(409, ERROR_MESSAGES[409])
        return JSONResponse(entry[3], status_code=202)

    def _create(self, request: Request, key: str, body: dict[str, Any]) -> ApiframeJob:
        webhook_url = body.get(self.webhook_field)
        job = ApiframeJob(
            id=str(uuid.uuid4()),
            key=key,
            input=body,
            clock=self.clock,
            started=self.clock.monotonic(),
            created_at=self.clock(),
            delay=0.0 if self.webhook == "early" else float(self.delay),
            fails=self.rng.random() < self.failure_rate,
            cost=self.credit_cost,
            base_url=base_url(request),
            webhook_url=webhook_url,
            events=frozenset(body.get("webhookEvents", EVENTS)),
            webhook_mode=self.webhook,
            webhook_delay=self.webhook_delay,
            progress_webhooks=self.progress_webhooks,
            result_shape=self.result_shape,
            webhook_status="PENDING" if webhook_url else None,
        )
        self.credits -= job.cost
        self.jobs[job.id] = job
        return job

    async def _get_job(self, request: Request) -> Response:
        key = self._authenticate(request)
        if isinstance(key, Response):
            return key
        job_id = request.path_params["job_id"]
        try:
            uuid.UUID(job_id)
        except ValueError:
            return error(400, "Invalid job id: expected a UUID")
        job = self.jobs.get(job_id)
        if job is None:
            return error(404, ERROR_MESSAGES[404])
        self._refund_failures()
        return JSONResponse(job.to_json(self.expire_after))

    @property
    def charged(self) -> float:
        """Credits taken for jobs, net of the refunds of those failed by now: what Apiframe billed."""
        self._refund_failures()
        return sum(job.cost for job in self.jobs.values() if not job.refunded)

    def _refund_failures(self) -> None:
        for job in self.jobs.values():
            if job.fails and not job.refunded and job.status()[0] == "FAILED":
                job.refunded = True
                self.credits += job.cost

    # -- webhooks ------------------------------------------------------------------------------------

    def _start(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _follow(self, job: ApiframeJob) -> None:
        """Send a job's progress webhooks, then its final one, on the job's schedule."""
        if job.webhook_mode == "drop":
            await self._sleep_until(job, job.delay)
            job.webhook_status = "FAILED"
            return
        if job.progress_webhooks and "progress" in job.events:
            for share in PROGRESS_SHARES:
                await self._sleep_until(job, processing_time(job.delay, share))
                if job.status()[0] == "PROCESSING":
                    await self._send(job, "progress")
        await self._sleep_until(job, job.delay + (job.webhook_delay if job.webhook_mode == "delay" else 0))
        await self._send_final(job)

    async def _send_final(self, job: ApiframeJob) -> None:
        event = "failed" if job.fails else "completed"
        if not job.webhook_url or event not in job.events:
            return
        copies = 2 if job.webhook_mode == "duplicate" else 1
        delivered = [await self._send(job, event) for _ in range(copies)]
        job.webhook_status = "DELIVERED" if any(delivered) else "FAILED"

    @staticmethod
    async def _sleep_until(job: ApiframeJob, offset: float) -> None:
        await job.clock.sleep(offset - job.elapsed())

    async def _send(self, job: ApiframeJob, event: str) -> bool:
        """POST one webhook, retrying a failure twice; True once a 2xx answer came back."""
        assert job.webhook_url is not None  # callers check
        raw = json.dumps(job.webhook_body(event), separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Webhook-Event": event,
            "X-Webhook-Signature": sign(raw, job.key),
        }
        for attempt, wait in enumerate((0.0, *RETRY_WAITS), start=1):
            await self.clock.sleep(wait)
            record: dict[str, Any] = {"t": self.clock.monotonic(), "url": job.webhook_url, "event": event}
            record.update(job_id=job.id, attempt=attempt)
            try:
                answer = await self._http().post(job.webhook_url, content=raw, headers=headers)
            except httpx.HTTPError as exc:
                record["error"] = f"{type(exc).__name__}: {exc}"
            else:
                record["status_code"] = answer.status_code
            record["answered"] = self.clock.monotonic()
            self.webhooks_sent.append(record)
            if 200 <= record.get("status_code", 0) < 300:
                return True
        return False

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT)
        return self._client

    async def _webhooks(self, request: Request) -> Response:
        return JSONResponse({"webhooks": list(self.webhooks_sent)})

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None:
            await self._client.aclose()
            self._client = None
