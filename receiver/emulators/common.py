"""What both emulators share: the sample file, injected errors, the request log and the /_emulator routes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import secrets
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from receiver.clock import Clock, system_clock

SAMPLE = Path(__file__).with_name("sample.mp4")
QUEUED_SHARE = 0.1  # share of a job's delay spent queued before it starts processing

Endpoint = Callable[[Request], Awaitable[Response]]


class BadRequestBody(ValueError):
    """The body is not JSON, or not a JSON object."""


FAULTS = ("malformed", "hang")


@dataclass
class Injection:
    """An error status the next `remaining` API requests answer with; with `until` (a reading of the
    emulator's clock), every API request answers it until then instead (a storm).

    With `fault`, the request is served as usual (a submit makes its job) and then its answer is spoilt:
    `malformed` sends the status with a cut-off JSON body, `hang` holds the answer `hold` seconds (past a
    client's timeout, the answer is lost)."""

    status: int
    remaining: int
    retry_after: float | None = None
    code: str | None = None
    until: float | None = None
    fault: str | None = None
    hold: float = 0.0


def key_digest(key: str) -> str:
    """A short fingerprint that tells keys apart in logs without revealing them."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def is_http_url(value: object) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def base_url(request: Request) -> str:
    """The URL this emulator was reached at; output URLs are built on it."""
    return str(request.base_url).rstrip("/")


def phase_share(elapsed: float, delay: float) -> float | None:
    """Where a job stands: None while queued, 0..1 while processing, 1.0 once final."""
    if elapsed >= delay:
        return 1.0
    if elapsed < delay * QUEUED_SHARE:
        return None
    return (elapsed - delay * QUEUED_SHARE) / (delay * (1 - QUEUED_SHARE))


def processing_time(delay: float, share: float) -> float:
    """Seconds after submit at which a job has done `share` of its processing."""
    return delay * QUEUED_SHARE + share * delay * (1 - QUEUED_SHARE)


async def read_json_object(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except ValueError as exc:
        raise BadRequestBody("the body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise BadRequestBody("the body must be a JSON object")
    return body


def check_number(name: str, value: object, low: float, high: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < low:
        raise ValueError(f"{name} must be a number of at least {low:g}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be a number from {low:g} to {high:g}")


def check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}")


@dataclass
class SimulatedJob:
    """A job an emulator is running: what both providers' jobs share. `key` is what created it; its
    timing is read on `clock`, from the moment it was created."""

    id: str
    key: str
    input: dict[str, Any]
    clock: Clock
    started: float  # clock.monotonic() at creation
    created_at: datetime
    delay: float
    fails: bool
    cost: float
    base_url: str

    def elapsed(self) -> float:
        return self.clock.monotonic() - self.started

    def share(self) -> float | None:
        """How far through processing (None while queued, 1.0 or more once final)."""
        return phase_share(self.elapsed(), self.delay)

    @property
    def completed_at(self) -> datetime:
        return self.created_at + timedelta(seconds=self.delay)

    @property
    def file_url(self) -> str:
        return f"{self.base_url}/files/{self.id}.mp4"


class RequestIdMiddleware:
    """Adds an `x-request-id` header to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = "req_" + secrets.token_hex(8)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        await self.app(scope, receive, send_with_id)


class Emulator:
    """A provider stand-in: its API routes plus `/healthz`, `/files/{name}.mp4` and `/_emulator/*`.

    Subclasses name their settings in `knobs`, add routes in `api_routes()` (each wrapped with `api()`,
    which answers injected errors and logs the request) and say how an injected error looks.
    """

    knobs: ClassVar[tuple[str, ...]] = ()
    middleware: ClassVar[Sequence[Middleware]] = ()

    def __init__(self, seed: int | None, clock: Clock = system_clock) -> None:
        self.seed = seed
        self.clock = clock
        self.rng = random.Random(seed)  # noqa: S311  # simulated failures, not cryptography
        self.requests: list[dict[str, Any]] = []
        self._injections: deque[Injection] = deque()
        self._lock = threading.Lock()  # inject() is called from the test's thread
        self.app = Starlette(
            routes=[*self._common_routes(), *self.api_routes()],
            middleware=list(self.middleware),
            lifespan=self._lifespan,
        )

    # -- what a subclass provides --------------------------------------------------------------------

    def api_routes(self) -> list[BaseRoute]:
        return []

    def control_routes(self) -> list[BaseRoute]:
        return []

    def error_response(self, injection: Injection) -> Response:
        raise NotImplementedError

    def validate(self) -> None:
        """Raise ValueError naming a setting that is out of range."""

    def file_available(self, name: str) -> bool:
        return True

    def log_entry(self, request: Request, status: int) -> dict[str, Any]:
        return {
            "t": self.clock.monotonic(),
            "method": request.method,
            "path": request.url.path,
            "status": status,
        }

    async def aclose(self) -> None:
        """Release what the emulator holds; runs at app shutdown."""

    # -- settings and injected errors ----------------------------------------------------------------

    def configure(self, **changes: Any) -> None:
        """Change settings at runtime; all or nothing. Running jobs keep the settings they started with."""
        unknown = sorted(set(changes) - set(self.knobs))
        if unknown:
            raise ValueError(f"unknown setting: {', '.join(unknown)}")
        before = {name: getattr(self, name) for name in changes}
        for name, value in changes.items():
            setattr(self, name, value)
        try:
            self.validate()
        except ValueError:
            for name, value in before.items():
                setattr(self, name, value)
            raise
        if "seed" in changes:
            self.rng.seed(self.seed)

    def config(self) -> dict[str, Any]:
        """The current settings, without the API key."""
        settings = {name: getattr(self, name) for name in self.knobs if name != "api_key"}
        settings["api_key_set"] = getattr(self, "api_key", None) is not None
        return settings

    def _queue(self, injection: Injection, seconds: float | None = None) -> None:
        """Queue an injection; with `seconds`, it answers every request for that long from now."""
        if not 400 <= injection.status <= 599:
            raise ValueError("status must be an HTTP error status, 400 to 599")
        if injection.remaining < 1:
            raise ValueError("count must be at least 1")
        if seconds is not None:
            check_number("seconds", seconds, 0)
            injection.until = self.clock.monotonic() + seconds
        with self._lock:
            self._injections.append(injection)

    def _take_injection(self) -> Injection | None:
        with self._lock:
            while self._injections:
                injection = self._injections[0]
                if injection.until is not None:
                    if self.clock.monotonic() < injection.until:
                        return injection
                    self._injections.popleft()
                    continue
                injection.remaining -= 1
                if injection.remaining == 0:
                    self._injections.popleft()
                return injection
            return None

    def api(self, endpoint: Endpoint) -> Endpoint:
        """Wrap an API endpoint: an injected error wins over it, and every answer is logged."""

        async def wrapped(request: Request) -> Response:
            injection = self._take_injection()
            if injection is None or injection.fault is not None:
                try:
                    response = await endpoint(request)
                except ClientDisconnect:  # the caller died mid-request (a kill -9): nobody to answer
                    response = Response(status_code=400)
            else:
                response = self.error_response(injection)
            if injection is not None and injection.fault == "malformed":
                response = Response(
                    bytes(response.body)[:7], response.status_code, media_type="application/json"
                )
            entry = self.log_entry(request, response.status_code)
            if injection is not None and injection.fault is not None:
                entry["fault"] = injection.fault
            self.requests.append(entry)
            if injection is not None and injection.fault == "hang":
                try:
                    await self.clock.sleep(injection.hold)
                except asyncio.CancelledError:  # the server is shutting down: the answer stays lost
                    return Response(status_code=503)
            return response

        return wrapped

    # -- routes every emulator has -------------------------------------------------------------------

    def _common_routes(self) -> list[BaseRoute]:
        return [
            Route("/healthz", self._healthz),
            Route("/files/{name}.mp4", self._file),
            Route("/_emulator/requests", self._requests),
            Route("/_emulator/inject", self._inject, methods=["POST"]),
            Route("/_emulator/config", self._config, methods=["GET", "POST"]),
            *self.control_routes(),
        ]

    async def _healthz(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def _file(self, request: Request) -> Response:
        if not self.file_available(request.path_params["name"]):
            return JSONResponse({"error": "file not found or expired"}, status_code=404)
        return FileResponse(SAMPLE, media_type="video/mp4")

    async def _requests(self, request: Request) -> Response:
        return JSONResponse({"requests": list(self.requests)})

    async def _inject(self, request: Request) -> Response:
        try:
            body = await read_json_object(request)
            if "fault" in body:
                self.inject_fault(**body)
            else:
                self.inject(**body)
        except (TypeError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"injected": body})

    async def _config(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                self.configure(**await read_json_object(request))
            except (TypeError, ValueError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(self.config())

    def inject(self, status: int, count: int = 1, *, seconds: float | None = None) -> None:
        self._queue(Injection(status=status, remaining=count), seconds)

    def inject_fault(
        self, fault: str, count: int = 1, hold: float = 0.0, *, seconds: float | None = None
    ) -> None:
        """The next `count` API requests (or every one for `seconds`) are served, then their answer is
        spoilt: `malformed` (a cut-off body) or `hang` (held `hold` seconds). Unlike an injected status,
        the request takes effect: a submit makes its job, so the caller cannot know it did."""
        check_choice("fault", fault, FAULTS)
        check_number("hold", hold, 0)
        self._queue(Injection(status=500, remaining=count, fault=fault, hold=hold), seconds)

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await self.aclose()
