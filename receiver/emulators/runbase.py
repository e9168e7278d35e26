"""A local Runbase (runs API, Kling 3.0): polling only, a per-key rate limit, balance and spend limits.

Follows PROVIDERS.md. Run status is computed on read from the time since submit.
"""

from __future__ import annotations

import hmac
import secrets
from collections import deque
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from receiver.clock import Clock, system_clock
from receiver.emulators.common import (
    BadRequestBody,
    Emulator,
    Injection,
    SimulatedJob,
    base_url,
    check_choice,
    check_number,
    is_http_url,
    key_digest,
    read_json_object,
)
from receiver.events import iso

MODEL = "kling/kling-3.0"
ASPECT_RATIOS = ("16:9", "9:16", "1:1")
MODES = ("std", "pro", "4K")
INPUT_KEYS = ("prompt", "aspect_ratio", "mode", "duration", "image_urls")
PROCESSING_STATUSES = ("processing", "running")  # some client code sees "running"
FAILURE_MESSAGE = "Generation failed: the model could not produce a video for this prompt"

DEFAULT_CODES = {
    400: ("invalid_input", "Invalid request"),
    401: ("invalid_api_key", "Invalid API key"),
    402: ("insufficient_balance", "Insufficient balance"),
    403: ("api_key_spend_limit_exceeded", "API key spend limit exceeded"),
    404: ("run_not_found", "Run not found"),
    429: ("RATE_LIMITED", "Rate limit exceeded"),
    500: ("internal_error", "Internal server error"),
}


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "code": code}}, status_code=status)


def bearer_key(request: Request) -> str | None:
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return key.strip() or None


def check_input(data: object) -> str | None:
    """What is wrong with a run's `input`, or None when it is valid."""
    if not isinstance(data, dict):
        return "input must be an object"
    unknown = sorted(set(data) - set(INPUT_KEYS))
    if unknown:
        return f"unknown input field(s): {', '.join(unknown)}"
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return "input.prompt is required and must be a non-empty string"
    if "aspect_ratio" in data and data["aspect_ratio"] not in ASPECT_RATIOS:
        return f"input.aspect_ratio must be one of {', '.join(ASPECT_RATIOS)}"
    if "mode" in data and data["mode"] not in MODES:
        return f"input.mode must be one of {', '.join(MODES)}"
    duration = data.get("duration", 1)
    if isinstance(duration, bool) or not isinstance(duration, int | float) or duration <= 0:
        return "input.duration must be a positive number of seconds"
    urls = data.get("image_urls", ["http://x"])
    if not isinstance(urls, list) or not 1 <= len(urls) <= 2 or not all(is_http_url(u) for u in urls):
        return "input.image_urls must be a list of 1 or 2 http(s) URLs (first frame, optional last frame)"
    return None


@dataclass
class Run(SimulatedJob):
    """One run (`key`: a digest of the API key that created it)."""

    processing_status: str

    def to_json(self) -> dict[str, Any]:
        share = self.share()
        status = "pending" if share is None else self.processing_status
        final = share is not None and share >= 1.0
        if final:
            status = "failed" if self.fails else "succeeded"
        return {
            "id": self.id,
            "model": MODEL,
            "status": status,
            "input": self.input,
            "costUsd": self.cost,
            "createdAt": iso(self.created_at),
            "completedAt": iso(self.completed_at) if final else None,
            "output": {"urls": [self.file_url]} if status == "succeeded" else None,
            "error": FAILURE_MESSAGE if status == "failed" else None,
        }


class RunbaseEmulator(Emulator):
    """Runbase on loopback. `api_key=None` accepts any non-empty bearer key.

    Checks run in this order: injected error, key (401), IP allow-list (403), rate limit (429), body
    (400), balance (402), spend limit (403). The rate limit is a sliding window of `rate_limit` requests
    per `rate_window` s per key over submits and reads together; only requests it lets through count,
    so a client that keeps retrying through 429s is not locked out for longer. 429ed requests are still
    logged in `requests`. A run is paid for at submit; the docs say nothing of refunds, so there are none.
    A submit answers 201 Created with the run object.
    """

    knobs = (
        "api_key", "delay", "failure_rate", "rate_limit", "rate_window", "balance", "cost_usd",
        "spend_limit", "allowed_ips", "processing_status", "seed",
    )  # fmt: skip

    def __init__(
        self,
        *,
        api_key: str | None = None,
        delay: float = 5.0,
        failure_rate: float = 0.0,
        rate_limit: int = 20,
        rate_window: float = 10.0,
        balance: float = 100.0,
        cost_usd: float = 0.5,
        spend_limit: float | None = None,
        allowed_ips: list[str] | None = None,
        processing_status: str = "processing",
        seed: int | None = None,
        clock: Clock = system_clock,
    ) -> None:
        self.api_key = api_key
        self.delay = delay
        self.failure_rate = failure_rate
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.balance = balance
        self.cost_usd = cost_usd
        self.spend_limit = spend_limit
        self.allowed_ips = allowed_ips
        self.processing_status = processing_status
        self.validate()
        self.runs: dict[str, Run] = {}
        self._windows: dict[str, deque[float]] = {}
        self._spent: dict[str, float] = {}
        super().__init__(seed, clock)

    def validate(self) -> None:
        if self.api_key is not None and not (isinstance(self.api_key, str) and self.api_key):
            raise ValueError("api_key must be a non-empty string or null")
        check_number("delay", self.delay, 0)
        check_number("failure_rate", self.failure_rate, 0, 1)
        if isinstance(self.rate_limit, bool) or not isinstance(self.rate_limit, int) or self.rate_limit < 1:
            raise ValueError("rate_limit must be a whole number of at least 1")
        check_number("rate_window", self.rate_window, 0)
        check_number("balance", self.balance, 0)
        check_number("cost_usd", self.cost_usd, 0)
        if self.spend_limit is not None:
            check_number("spend_limit", self.spend_limit, 0)
        if self.allowed_ips is not None and not (
            isinstance(self.allowed_ips, list) and all(isinstance(ip, str) for ip in self.allowed_ips)
        ):
            raise ValueError("allowed_ips must be a list of IP addresses or null")
        check_choice("processing_status", self.processing_status, PROCESSING_STATUSES)

    def api_routes(self) -> list[BaseRoute]:
        return [
            Route("/api/v1/runs", self.api(self._submit), methods=["POST"]),
            Route("/api/v1/runs/{run_id}", self.api(self._get_run)),
        ]

    def inject(
        self, status: int, count: int = 1, code: str | None = None, *, seconds: float | None = None
    ) -> None:
        """The next `count` API requests (or, with `seconds`, every API request for that long) answer
        `status` with `code` (default: the status's usual code)."""
        self._queue(Injection(status=status, remaining=count, code=code), seconds)

    def error_response(self, injection: Injection) -> Response:
        default_code, message = DEFAULT_CODES.get(injection.status, ("error", "Request failed"))
        return error(injection.status, injection.code or default_code, message)

    def log_entry(self, request: Request, status: int) -> dict[str, Any]:
        key = bearer_key(request)
        return {**super().log_entry(request, status), "key": key_digest(key) if key else None}

    # -- the API -------------------------------------------------------------------------------------

    def _admit(self, request: Request) -> str | Response:
        """The caller's key digest, or the answer that turns the request away."""
        key = bearer_key(request)
        if key is None:
            return error(401, "missing_api_key", "Missing API key: send Authorization: Bearer <key>")
        if self.api_key is not None and not hmac.compare_digest(key.encode(), self.api_key.encode()):
            return error(401, "invalid_api_key", "Invalid API key")
        client = request.client.host if request.client else ""
        if self.allowed_ips is not None and client not in self.allowed_ips:
            return error(403, "ip_not_allowed", f"Requests from {client or 'this address'} are not allowed")
        digest = key_digest(key)
        window = self._windows.setdefault(digest, deque())
        now = self.clock.monotonic()
        while window and window[0] <= now - self.rate_window:
            window.popleft()
        if len(window) >= self.rate_limit:
            return error(429, "RATE_LIMITED", "Rate limit exceeded: slow down")
        window.append(now)
        return digest

    async def _submit(self, request: Request) -> Response:
        key = self._admit(request)
        if isinstance(key, Response):
            return key
        try:
            body = await read_json_object(request)
        except BadRequestBody as exc:
            return error(400, "invalid_json", f"Invalid JSON: {exc}")
        if not body.get("model"):
            return error(400, "missing_model", "model is required")
        if body["model"] != MODEL:
            return error(400, "model_not_found", f"Model not found: {body['model']!r}")
        if body.get("input") is None:
            return error(400, "missing_input", "input is required")
        unknown = sorted(set(body) - {"model", "input"})
        problem = f"unknown field(s): {', '.join(unknown)}" if unknown else check_input(body["input"])
        if problem:
            return error(400, "invalid_input", problem)
        if self.balance < self.cost_usd:
            return error(402, "insufficient_balance", "Insufficient balance")
        spent = self._spent.get(key, 0.0)
        if self.spend_limit is not None and spent + self.cost_usd > self.spend_limit:
            return error(403, "api_key_spend_limit_exceeded", "API key spend limit exceeded")
        run = Run(
            id="run_" + secrets.token_hex(12),
            key=key,
            input=body["input"],
            clock=self.clock,
            started=self.clock.monotonic(),
            created_at=self.clock(),
            delay=float(self.delay),
            fails=self.rng.random() < self.failure_rate,
            cost=self.cost_usd,
            base_url=base_url(request),
            processing_status=self.processing_status,
        )
        self.balance -= run.cost
        self._spent[key] = spent + run.cost
        self.runs[run.id] = run
        # A new run is always reported pending, even with delay 0, as the docs show.
        answer = {**run.to_json(), "status": "pending", "completedAt": None, "output": None, "error": None}
        return JSONResponse(answer, status_code=201)

    @property
    def charged(self) -> float:
        """Dollars taken for runs (paid at submit, never refunded): what Runbase billed."""
        return sum(run.cost for run in self.runs.values())

    async def _get_run(self, request: Request) -> Response:
        key = self._admit(request)
        if isinstance(key, Response):
            return key
        run = self.runs.get(request.path_params["run_id"])
        if run is None:
            return error(404, "run_not_found", "Run not found")
        return JSONResponse(run.to_json())
