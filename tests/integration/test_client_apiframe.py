"""ApiframeClient over real HTTP on loopback, against the Apiframe emulator."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from receiver.background import BackgroundServer
from receiver.clock import VirtualClock
from receiver.emulators.apiframe import ApiframeEmulator
from receiver.events import JobStatus
from receiver.generation import KlingRequest
from receiver.providers import make_client
from receiver.providers.apiframe import ApiframeClient, parse_webhook, verify_signature
from receiver.providers.base import (
    AuthenticationError,
    Conflict,
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
from tests.support.clock import SteppingClock

pytestmark = pytest.mark.anyio

KEY = "afk_integration_secret_0123456789"
UNKNOWN_JOB = "00000000-0000-4000-8000-000000000000"


class Emulated:
    def __init__(self, **settings: Any) -> None:
        settings.setdefault("delay", 0.3)
        self.clock = settings.setdefault("clock", VirtualClock())
        settings.setdefault("webhook", "drop")
        self.emulator = ApiframeEmulator(api_key=KEY, seed=1, **settings)
        self.server = BackgroundServer(self.emulator.app)
        self.waits = SteppingClock()  # the client's retry waits pass at once and are recorded

    def client(self, key: str = KEY, **options: Any) -> ApiframeClient:
        options.setdefault("clock", self.waits)
        return ApiframeClient(key, self.server.url, **options)

    def calls(self, method: str) -> list[dict[str, Any]]:
        return [r for r in self.emulator.requests if r["method"] == method]


@pytest.fixture
def emulated() -> Iterator[Emulated]:
    emulated = Emulated()
    with emulated.server:
        yield emulated


async def _follow(emulated: Emulated, client: ApiframeClient, job_id: str) -> ProviderStatus:
    """Read the status until it is final, moving the emulator's clock on 0.1 s after each read."""
    for _ in range(100):
        status = await client.get_status(job_id)
        if status.status.terminal:
            return status
        emulated.clock.advance(0.1)
    raise AssertionError(f"job {job_id} did not finish")


async def test_submit_then_poll_to_success(emulated: Emulated) -> None:
    client = emulated.client()
    submitted = await client.submit("job_ok", KlingRequest(prompt="a lamp", mode="standard"))
    assert submitted.status is JobStatus.SUBMITTED
    assert submitted.provider_job_id in emulated.emulator.jobs
    seen = {(await client.get_status(submitted.provider_job_id)).status}
    final = await _follow(emulated, client, submitted.provider_job_id)
    assert final.status is JobStatus.SUCCEEDED
    assert final.output_urls == [f"{emulated.server.url}/files/{submitted.provider_job_id}.mp4"]
    assert final.progress == 100
    assert seen <= {JobStatus.SUBMITTED, JobStatus.RUNNING}
    sent = emulated.emulator.jobs[submitted.provider_job_id].input
    assert sent == {
        "prompt": "a lamp",
        "model": "kling-3.0",
        "klingParams": {"mode": "standard", "generate_audio": False},
    }
    await client.aclose()


@pytest.mark.parametrize("shape", ["videos", "string"])
async def test_every_result_shape_gives_the_url(shape: str) -> None:
    emulated = Emulated(result_shape=shape, delay=0.0)
    with emulated.server:
        client = emulated.client()
        submitted = await client.submit("job_shape", KlingRequest(prompt="p"))
        final = await _follow(emulated, client, submitted.provider_job_id)
        assert final.output_urls == [f"{emulated.server.url}/files/{submitted.provider_job_id}.mp4"]
        await client.aclose()


async def test_failed_job() -> None:
    emulated = Emulated(failure_rate=1.0)
    with emulated.server:
        client = emulated.client()
        submitted = await client.submit("job_fail", KlingRequest(prompt="p"))
        final = await _follow(emulated, client, submitted.provider_job_id)
        assert final.status is JobStatus.FAILED
        assert final.error is not None
        assert final.error.code == "provider_failed"
        assert "Generation failed" in final.error.message
        assert final.output_urls == []
        await client.aclose()


async def test_same_job_id_is_one_provider_job(emulated: Emulated) -> None:
    client = emulated.client()
    first = await client.submit("job_twice", KlingRequest(prompt="p"), "https://hooks.test/a")
    second = await client.submit("job_twice", KlingRequest(prompt="p"), "https://hooks.test/a")
    assert first.provider_job_id == second.provider_job_id
    assert len(emulated.emulator.jobs) == 1
    other = await client.submit("job_other", KlingRequest(prompt="p"), "https://hooks.test/a")
    assert other.provider_job_id != first.provider_job_id
    await client.aclose()


async def test_same_job_id_with_another_body_is_a_conflict(emulated: Emulated) -> None:
    client = emulated.client(max_attempts=1)
    await client.submit("job_changed", KlingRequest(prompt="p"))
    with pytest.raises(Conflict) as info:
        await client.submit("job_changed", KlingRequest(prompt="another prompt"))
    assert "Idempotency-Key" in str(info.value)
    assert len(emulated.emulator.jobs) == 1
    await client.aclose()


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_type", "message"),
    [
        (400, InvalidRequest, "Invalid request body"),
        (401, AuthenticationError, "Invalid API key"),
        (402, InsufficientCredits, "Insufficient credits"),
        (403, Forbidden, "Forbidden"),
        (404, NotFound, "Job not found"),
        (409, Conflict, "Idempotency-Key was already used"),
        (429, RateLimited, "Rate limit exceeded"),
        (503, ProviderUnavailable, "Service unavailable"),
    ],
)
@pytest.mark.parametrize("operation", ["submit", "read"])
async def test_injected_errors(
    emulated: Emulated, status: int, error_type: type[ProviderError], message: str, operation: str
) -> None:
    client = emulated.client(max_attempts=1)
    emulated.emulator.inject(status)
    if operation == "submit":
        call = client.submit("job_err", KlingRequest(prompt="p"))
    else:
        call = client.get_status(UNKNOWN_JOB)
    with pytest.raises(error_type) as info:
        await call
    error = info.value
    assert type(error) is error_type
    assert error.status_code == status
    assert message in str(error)
    assert error.request_id is not None
    assert error.request_id.startswith("req_")
    assert error.request_id in str(error)
    if status == 402:
        assert "credits required 10" in str(error)
        assert "available 1000" in str(error)
    if isinstance(error, RateLimited):
        assert error.retry_after == 1.0
    if isinstance(error, InvalidRequest):
        assert error.details == []
    await client.aclose()


async def test_real_402_names_the_credit_figures() -> None:
    emulated = Emulated(credits=4.5, credit_cost=10.0)
    with emulated.server:
        client = emulated.client()
        with pytest.raises(InsufficientCredits) as info:
            await client.submit("job_poor", KlingRequest(prompt="p"))
        assert (info.value.credits_required, info.value.credits_available) == (10.0, 4.5)
        assert "credits required 10, available 4.5" in str(info.value)
        assert len(emulated.calls("POST")) == 1
        await client.aclose()


async def test_real_401_with_a_wrong_key_never_shows_either_key(emulated: Emulated) -> None:
    wrong = "afk_wrong_key_abcdef"
    client = emulated.client(key=wrong)
    with capture_logs() as logs, pytest.raises(AuthenticationError) as info:
        await client.get_status(UNKNOWN_JOB)
    assert "Invalid API key" in str(info.value)
    for key in (wrong, KEY):
        assert key not in str(info.value)
        assert key not in repr(logs)
    assert len(emulated.calls("GET")) == 1
    await client.aclose()


async def test_real_404_and_400_on_reads(emulated: Emulated) -> None:
    client = emulated.client()
    with pytest.raises(NotFound):
        await client.get_status(UNKNOWN_JOB)
    with pytest.raises(InvalidRequest, match="UUID"):
        await client.get_status("not-a-uuid")
    await client.aclose()


async def test_unreachable_provider_is_not_sent() -> None:
    emulated = Emulated()
    with emulated.server:
        url = emulated.server.url
    client = ApiframeClient(KEY, url)
    with pytest.raises(NotSent):
        await client.get_status(UNKNOWN_JOB)
    await client.aclose()


# --- retries -----------------------------------------------------------------------------------


async def test_read_is_retried_after_503(emulated: Emulated) -> None:
    client = emulated.client()
    submitted = await client.submit("job_r", KlingRequest(prompt="p"))
    emulated.emulator.inject(503, count=2)
    status = await client.get_status(submitted.provider_job_id)
    assert status.provider_job_id == submitted.provider_job_id
    assert [r["status"] for r in emulated.calls("GET")] == [503, 503, 200]
    await client.aclose()


@pytest.mark.parametrize("status", [503, 429])
async def test_submit_is_retried_and_buys_one_video(emulated: Emulated, status: int) -> None:
    client = emulated.client()
    emulated.emulator.inject(status, count=2, retry_after=0)
    submitted = await client.submit("job_retry", KlingRequest(prompt="p"))
    assert [r["status"] for r in emulated.calls("POST")] == [status, status, 202]
    assert list(emulated.emulator.jobs) == [submitted.provider_job_id]
    await client.aclose()


async def test_retries_stop_after_max_attempts(emulated: Emulated) -> None:
    client = emulated.client()
    emulated.emulator.inject(503, count=10)
    with pytest.raises(ProviderUnavailable):
        await client.get_status(UNKNOWN_JOB)
    assert len(emulated.calls("GET")) == 4
    await client.aclose()


async def test_retry_after_is_waited(emulated: Emulated) -> None:
    client = emulated.client()
    emulated.emulator.inject(429, retry_after=7)
    with pytest.raises(NotFound):
        await client.get_status(UNKNOWN_JOB)
    assert emulated.waits.slept == [7.0]
    assert [r["status"] for r in emulated.calls("GET")] == [429, 404]
    await client.aclose()


async def test_retries_back_off_exponentially(emulated: Emulated) -> None:
    client = emulated.client(wait_initial=0.5, wait_max=10.0)
    emulated.emulator.inject(503, count=10)
    with pytest.raises(ProviderUnavailable):
        await client.get_status(UNKNOWN_JOB)
    # Three waits between four attempts: 0.5 s doubling, each with up to 25% jitter.
    assert len(emulated.waits.slept) == 3
    for nominal, waited in zip([0.5, 1.0, 2.0], emulated.waits.slept, strict=True):
        assert nominal <= waited <= nominal * 1.25
    await client.aclose()


# --- webhooks from the emulator ----------------------------------------------------------------


@pytest.mark.parametrize("field", ["webhookUrl", "webhook_url"])
async def test_webhooks_verify_and_parse(field: str, sink: Any, wait: Callable[..., Any]) -> None:
    emulated = Emulated(webhook="deliver", webhook_field=field)
    with emulated.server:
        client = make_client("apiframe", api_key=KEY, base_url=emulated.server.url, webhook_field=field)
        submitted = await client.submit("job_hook", KlingRequest(prompt="p"), sink.url)
        emulated.clock.advance(0.3)
        wait(lambda: any(post.headers.get("x-webhook-event") == "completed" for post in sink.posts))
        reports = []
        for post in sink.posts:
            signature = post.headers.get("x-webhook-signature")
            assert verify_signature(KEY, post.body, signature)
            assert not verify_signature("afk_other", post.body, signature)
            reports.append(parse_webhook(json.loads(post.body)))
        assert reports[-1].status is JobStatus.SUCCEEDED
        assert reports[-1].provider_job_id == submitted.provider_job_id
        assert reports[-1].output_urls
        assert {r.status for r in reports[:-1]} <= {JobStatus.RUNNING}
        await client.aclose()
