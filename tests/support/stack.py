"""A whole receiver on loopback for integration tests: both emulators and the app, on one virtual clock."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

from receiver.app import create_app
from receiver.background import BackgroundServer
from receiver.clock import VirtualClock
from receiver.config import Settings
from receiver.emulators.apiframe import ApiframeEmulator
from receiver.emulators.runbase import RunbaseEmulator
from receiver.service import Receiver
from receiver.serving import ServerLimits
from tests.support.waiting import wait_until

SECRET = "test-receiver-secret-0123456789"
ADMIN = "test-admin-token"
APIFRAME_KEY = "afk_test_key_123"
RUNBASE_KEY = "rb_test_key_456"
FORWARD_SECRET = "whsec_" + base64.b64encode(b"forward-secret-for-tests").decode()


@dataclass
class Stack:
    """`clock` drives the receiver, its handlers and both emulators: time passes when a test says."""

    clock: VirtualClock
    receiver: Receiver
    url: str
    admin: httpx.Client
    apiframe: ApiframeEmulator
    apiframe_url: str
    runbase: RunbaseEmulator
    runbase_url: str

    def submit(self, provider: str, **fields: Any) -> dict[str, Any]:
        answer = self.admin.post(
            "/jobs", json={"provider": provider, "prompt": "a red fox in snow", **fields}
        )
        assert answer.status_code == 202, answer.text
        job: dict[str, Any] = answer.json()
        # The submit woke the worker to plan the job's first poll: let it, before time moves on.
        wait_until(lambda: not self.receiver.worker.wake_pending)
        return job

    def job(self, job_id: str) -> dict[str, Any]:
        answer = self.admin.get(f"/jobs/{job_id}")
        assert answer.status_code == 200, answer.text
        job: dict[str, Any] = answer.json()
        return job

    def settled(self, job_id: str, status: str = "delivered") -> dict[str, Any] | None:
        """The job once it has deliveries and all of them are in `status`; None before."""
        job = self.job(job_id)
        deliveries = job["deliveries"]
        return job if deliveries and all(d["status"] == status for d in deliveries) else None

    def hook_url(self, job_id: str, provider: str = "apiframe") -> str:
        return self.receiver.signer.url(self.url, job_id, provider)

    def advance(self, seconds: float, sleepers: int = 1) -> None:
        """Once the worker has finished its round and sleeps (with `sleepers` counting anything else
        asleep on the clock, such as an Apiframe job's webhook schedule), move time on by `seconds`."""
        self.clock.wait_for_sleepers(sleepers)
        self.clock.advance(seconds)

    def run_until(self, predicate: Callable[[], Any], sleepers: int = 1, limit: int = 100) -> Any:
        """Jump from one wake-up on the clock to the next until `predicate()` holds, looking each time
        everything has gone back to sleep; the predicate's value."""
        for _ in range(limit):
            deadlines = self.clock.wait_for_sleepers(sleepers)
            if value := predicate():
                return value
            self.clock.advance_to(deadlines[0])
        raise AssertionError(f"not done after {limit} wake-ups, at {self.clock.monotonic()} s")


def apiframe_body(provider_job_id: str, *, event: str = "completed", result: Any = None) -> bytes:
    if event == "completed":
        data: dict[str, Any] = {
            "event": "completed", "jobId": provider_job_id, "status": "COMPLETED", "progress": 100,
            "result": result if result is not None else {"videoUrl": "http://127.0.0.1:9/v.mp4"},
            "model": "kling-3.0", "creditCost": 10, "completedAt": "2026-01-01T00:00:00Z",
        }  # fmt: skip
    elif event == "progress":
        data = {"event": "progress", "jobId": provider_job_id, "status": "PROCESSING", "progress": 40,
                "model": "kling-3.0"}  # fmt: skip
    else:
        data = {"event": "failed", "jobId": provider_job_id, "status": "FAILED", "error": "boom",
                "model": "kling-3.0"}  # fmt: skip
    return json.dumps(data).encode()


def apiframe_signature(body: bytes, key: str = APIFRAME_KEY) -> str:
    return "sha256=" + hmac.new(hashlib.sha256(key.encode()).digest(), body, hashlib.sha256).hexdigest()


def verify_forward(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """Check a forwarded event with the standardwebhooks package: an independent implementation."""
    payload: dict[str, Any] = Webhook(FORWARD_SECRET).verify(body, headers)
    return payload


@contextmanager
def receiver_stack(
    tmp_path: Path,
    forward_url: str | None,
    *,
    apiframe: dict[str, Any] | None = None,
    runbase: dict[str, Any] | None = None,
    run_worker: bool = True,
    handlers: list[dict[str, Any]] | None = None,
    clock: VirtualClock | None = None,
    limits: ServerLimits | None = None,
    **settings: Any,
) -> Iterator[Stack]:
    """Emulator jobs take 0.3 s and the receiver expects 0.3 s, on a virtual clock that starts at the
    real time (in whole seconds: forward's signatures carry seconds, and verifiers check them
    against the real clock)."""
    clock = clock or VirtualClock(datetime.now(UTC).replace(microsecond=0))
    apiframe_emulator = ApiframeEmulator(
        api_key=APIFRAME_KEY, clock=clock, **{"delay": 0.3, "seed": 1, **(apiframe or {})}
    )
    runbase_emulator = RunbaseEmulator(
        api_key=RUNBASE_KEY, clock=clock, **{"delay": 0.3, "seed": 1, **(runbase or {})}
    )
    if handlers is None:
        handlers = [{"name": "forward", "type": "forward", "url": forward_url, "secret": FORWARD_SECRET,
                     "retry_base": 0}]  # fmt: skip
    with ExitStack() as stack:
        apiframe_server = BackgroundServer(apiframe_emulator.app).start()
        runbase_server = BackgroundServer(runbase_emulator.app).start()
        server = BackgroundServer(limits=limits or ServerLimits())  # as `receiver serve` runs
        stack.callback(stop_together, server, apiframe_server, runbase_server)
        config = replace(
            Settings(),
            secret=SECRET,
            public_url=server.url,
            apiframe_api_key=APIFRAME_KEY,
            apiframe_base_url=apiframe_server.url,
            runbase_api_key=RUNBASE_KEY,
            runbase_base_url=runbase_server.url,
            handlers=handlers,
            **{
                "database_url": f"sqlite:///{tmp_path / 'receiver.db'}",
                "expected_seconds": 0.3,
                "admin_token": ADMIN,
                **settings,
            },
        )
        receiver = Receiver.from_settings(config, clock=clock)
        server.app = create_app(receiver, run_worker=run_worker)
        server.start()
        admin = stack.enter_context(
            httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
        )
        yield Stack(
            clock,
            receiver,
            server.url,
            admin,
            apiframe_emulator,
            apiframe_server.url,
            runbase_emulator,
            runbase_server.url,
        )


def stop_together(*servers: BackgroundServer) -> None:
    """Shut servers down side by side, in the order given (the receiver before the emulators it calls)."""
    for server in servers:
        server.request_stop()
    for server in servers:
        server.stop()
