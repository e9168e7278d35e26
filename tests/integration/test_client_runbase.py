"""RunbaseClient over real HTTP on loopback, against the Runbase emulator."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from receiver.background import BackgroundServer
from receiver.clock import VirtualClock
from receiver.emulators.runbase import RunbaseEmulator
from receiver.events import JobStatus
from receiver.generation import KlingRequest
from receiver.providers import make_client
from receiver.providers.base import (
    AuthenticationError,
    Forbidden,
    InsufficientCredits,
    InvalidRequest,
    NotFound,
    NotSent,
    ProviderError,
    ProviderStatus,
    ProviderUnavailable,
    RateLimited,
)
from receiver.providers.ratelimit import LocalBudget
from receiver.providers.runbase import RunbaseClient
from tests.support.clock import SteppingClock

pytestmark = pytest.mark.anyio

KEY = "rb_integration_secret_0123456789"


class Emulated:
    def __init__(self, **settings: Any) -> None:
        settings.setdefault("delay", 0.3)
        self.clock = settings.setdefault("clock", VirtualClock())
        self.emulator = RunbaseEmulator(api_key=KEY, seed=1, **settings)
        self.server = BackgroundServer(self.emulator.app)
        self.waits = SteppingClock()  # the client's retry waits pass at once and are recorded

    def client(self, key: str = KEY, **options: Any) -> RunbaseClient:
        options.setdefault("clock", self.waits)
        return RunbaseClient(key, self.server.url, **options)

    def calls(self, method: str) -> list[dict[str, Any]]:
        return [r for r in self.emulator.requests if r["method"] == method]


@pytest.fixture
def emulated() -> Iterator[Emulated]:
    emulated = Emulated()
    with emulated.server:
        yield emulated


async def _follow(emulated: Emulated, client: RunbaseClient, run_id: str) -> ProviderStatus:
    """Read the status until it is final, moving the emulator's clock on 0.1 s after each read."""
    for _ in range(100):
        status = await client.get_status(run_id)
        if status.status.terminal:
            return status
        emulated.clock.advance(0.1)
    raise AssertionError(f"run {run_id} did not finish")


@pytest.mark.parametrize("processing_status", ["processing", "running"])
async def test_submit_then_poll_to_success(processing_status: str) -> None:
    emulated = Emulated(processing_status=processing_status)
    with emulated.server:
        client = emulated.client()
        request = KlingRequest(
            prompt="a lamp",
            mode="4k",
            aspect_ratio="9:16",
            duration=5,
            start_image="https://x.test/a.jpg",
            end_image="https://x.test/b.jpg",
        )
        submitted = await client.submit("job_ok", request)
        assert submitted.status is JobStatus.SUBMITTED
        assert submitted.provider_job_id.startswith("run_")
        seen: set[JobStatus] = set()
        for _ in range(200):
            status = await client.get_status(submitted.provider_job_id)
            seen.add(status.status)
            if status.status.terminal:
                break
            emulated.clock.advance(0.05)
        assert status.status is JobStatus.SUCCEEDED
        assert status.output_urls == [f"{emulated.server.url}/files/{submitted.provider_job_id}.mp4"]
        assert JobStatus.RUNNING in seen
        assert emulated.emulator.runs[submitted.provider_job_id].input == {
            "prompt": "a lamp",
            "mode": "4K",
            "aspect_ratio": "9:16",
            "duration": 5,
            "image_urls": ["https://x.test/a.jpg", "https://x.test/b.jpg"],
        }
        await client.aclose()


async def test_failed_run() -> None:
    emulated = Emulated(failure_rate=1.0)
    with emulated.server:
        client = emulated.client()
        submitted = await client.submit("job_fail", KlingRequest(prompt="p"))
        final = await _follow(emulated, client, submitted.provider_job_id)
        assert final.status is JobStatus.FAILED
        assert final.error is not None
        assert final.error.code == "provider_failed"
        assert "Generation failed" in final.error.message
        await client.aclose()


async def test_webhook_url_is_ignored(emulated: Emulated) -> None:
    client = make_client("runbase", api_key=KEY, base_url=emulated.server.url)
    submitted = await client.submit("job_hook", KlingRequest(prompt="p"), "https://hooks.test/x")
    assert emulated.emulator.runs[submitted.provider_job_id].input == {"prompt": "p", "mode": "pro"}
    await client.aclose()


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "error_type"),
    [
        (400, "invalid_json", InvalidRequest),
        (400, "missing_model", InvalidRequest),
        (400, "missing_input", InvalidRequest),
        (400, "invalid_input", InvalidRequest),
        (400, "model_not_found", InvalidRequest),
        (401, "missing_api_key", AuthenticationError),
        (401, "invalid_api_key", AuthenticationError),
        (402, "insufficient_balance", InsufficientCredits),
        (403, "api_key_spend_limit_exceeded", Forbidden),
        (403, "ip_not_allowed", Forbidden),
        (404, "run_not_found", NotFound),
        (429, "RATE_LIMITED", RateLimited),
        (429, "USAGE_EXCEEDED", RateLimited),
        (500, "internal_error", ProviderUnavailable),
    ],
)
@pytest.mark.parametrize("operation", ["submit", "read"])
async def test_injected_errors(
    emulated: Emulated, status: int, code: str, error_type: type[ProviderError], operation: str
) -> None:
    client = emulated.client(max_attempts=1)
    emulated.emulator.inject(status, code=code)
    if operation == "submit":
        call = client.submit("job_err", KlingRequest(prompt="p"))
    else:
        call = client.get_status("run_missing")
    with pytest.raises(error_type) as info:
        await call
    error = info.value
    assert type(error) is error_type
    assert (error.status_code, error.code) == (status, code)
    assert code in str(error)
    assert error.request_id is None or error.request_id in str(error)
    await client.aclose()


async def test_real_refusals() -> None:
    emulated = Emulated(balance=0.2, cost_usd=0.5)
    with emulated.server:
        client = emulated.client()
        with pytest.raises(InsufficientCredits, match="insufficient_balance"):
            await client.submit("job_poor", KlingRequest(prompt="p"))
        with pytest.raises(NotFound, match="run_not_found"):
            await client.get_status("run_nope")
        emulated.emulator.configure(balance=10.0, spend_limit=0.1)
        with pytest.raises(Forbidden, match="api_key_spend_limit_exceeded"):
            await client.submit("job_limited", KlingRequest(prompt="p"))
        emulated.emulator.configure(allowed_ips=["10.9.9.9"])
        with pytest.raises(Forbidden, match="ip_not_allowed"):
            await client.get_status("run_nope")
        assert emulated.emulator.runs == {}
        await client.aclose()


async def test_wrong_key_is_refused_and_never_shown(emulated: Emulated) -> None:
    wrong = "rb_wrong_key_abcdef"
    client = emulated.client(key=wrong)
    with capture_logs() as logs, pytest.raises(AuthenticationError, match="invalid_api_key") as info:
        await client.get_status("run_x")
    for key in (wrong, KEY):
        assert key not in str(info.value)
        assert key not in repr(logs)
    await client.aclose()


async def test_unreachable_provider_is_not_sent() -> None:
    emulated = Emulated()
    with emulated.server:
        url = emulated.server.url
    client = RunbaseClient(KEY, url)
    with pytest.raises(NotSent):
        await client.submit("job_x", KlingRequest(prompt="p"))
    await client.aclose()


# --- retries -----------------------------------------------------------------------------------


async def test_submit_is_not_retried_after_500(emulated: Emulated) -> None:
    client = emulated.client()
    emulated.emulator.inject(500, count=3)
    with pytest.raises(ProviderUnavailable):
        await client.submit("job_once", KlingRequest(prompt="p"))
    assert [r["status"] for r in emulated.calls("POST")] == [500]
    await client.aclose()


async def test_submit_is_not_retried_after_429(emulated: Emulated) -> None:
    client = emulated.client()
    emulated.emulator.inject(429, count=3)
    with pytest.raises(RateLimited):
        await client.submit("job_once", KlingRequest(prompt="p"))
    assert len(emulated.calls("POST")) == 1
    await client.aclose()


async def test_read_is_retried_after_500(emulated: Emulated) -> None:
    client = emulated.client()
    submitted = await client.submit("job_r", KlingRequest(prompt="p"))
    emulated.emulator.inject(500, count=2)
    assert (await client.get_status(submitted.provider_job_id)).provider_job_id == submitted.provider_job_id
    assert [r["status"] for r in emulated.calls("GET")] == [500, 500, 200]
    await client.aclose()


async def test_read_429_slows_the_whole_key() -> None:
    # One clock for the emulator's log, the client's retry waits and the budget: waits pass at once.
    clock = SteppingClock()
    emulated = Emulated(clock=clock)
    with emulated.server:
        budget = LocalBudget(limit=100, window=1.0, clock=clock.monotonic, sleep=clock.sleep)
        client = emulated.client(budget=budget, wait_initial=0.3, clock=clock)
        submitted = await client.submit("job_r", KlingRequest(prompt="p"))
        emulated.emulator.inject(429)
        await client.get_status(submitted.provider_job_id)
        gets = emulated.calls("GET")
        assert [r["status"] for r in gets] == [429, 200]
        # The retry waits its backoff (0.3 s plus up to 25% jitter) and the key's penalty the same.
        assert 0.3 <= gets[1]["t"] - gets[0]["t"] <= 0.375
        await client.aclose()


async def test_budget_keeps_a_burst_within_the_limit() -> None:
    limit, window = 5, 0.5
    clock = SteppingClock()
    emulated = Emulated(rate_limit=limit, rate_window=window, delay=60.0, clock=clock)
    with emulated.server:
        budget = LocalBudget(limit=limit, window=window, clock=clock.monotonic, sleep=clock.sleep)
        client = emulated.client(budget=budget, clock=clock)
        submitted = await client.submit("job_burst", KlingRequest(prompt="p"))
        results: list[ProviderStatus] = []

        async def read() -> None:
            results.append(await client.get_status(submitted.provider_job_id))

        async with anyio.create_task_group() as group:
            for _ in range(30):
                group.start_soon(read)
        assert len(results) == 30
        log = emulated.emulator.requests
        assert len(log) == 31
        assert {r["status"] for r in log} == {200, 201}
        stamps = sorted(r["t"] for r in log)
        busiest = max(sum(1 for t in stamps if start <= t < start + window) for start in stamps)
        assert busiest <= limit
        await client.aclose()
