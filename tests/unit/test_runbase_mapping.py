"""Runbase: body building, refusals, run status mapping, and error mapping with budget penalties."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import httpx
import pytest
from structlog.testing import capture_logs

from receiver.events import JobError, JobStatus
from receiver.generation import KlingRequest
from receiver.providers.base import (
    AuthenticationError,
    Forbidden,
    InsufficientCredits,
    InvalidRequest,
    NotFound,
    NotSent,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    UnexpectedResponse,
    UnsupportedParameter,
)
from receiver.providers.ratelimit import budget_key
from receiver.providers.runbase import RunbaseClient, build_body, check, map_status, parse_error
from tests.support.clock import SteppingClock

KEY = "rb_test_secret_key_0123456789"
RUN = "run_abc123"


# --- body --------------------------------------------------------------------------------------


def test_body_for_a_bare_prompt() -> None:
    assert build_body(KlingRequest(prompt="a lamp")) == {
        "model": "kling/kling-3.0",
        "input": {"prompt": "a lamp", "mode": "pro"},
    }


@pytest.mark.parametrize(("mode", "sent"), [("standard", "std"), ("pro", "pro"), ("4k", "4K")])
def test_modes(mode: str, sent: str) -> None:
    assert build_body(KlingRequest(prompt="p", mode=mode))["input"]["mode"] == sent


def test_body_with_every_runbase_field() -> None:
    request = KlingRequest(
        prompt="p",
        aspect_ratio="9:16",
        duration=8,
        start_image="https://x.test/a.jpg",
        end_image="https://x.test/b.jpg",
    )
    assert build_body(request)["input"] == {
        "prompt": "p",
        "mode": "pro",
        "aspect_ratio": "9:16",
        "duration": 8,
        "image_urls": ["https://x.test/a.jpg", "https://x.test/b.jpg"],
    }


def test_start_image_alone() -> None:
    assert build_body(KlingRequest(prompt="p", start_image="https://x.test/a.jpg"))["input"][
        "image_urls"
    ] == ["https://x.test/a.jpg"]


@pytest.mark.parametrize(
    ("fields", "parameter"),
    [
        ({"negative_prompt": "blur"}, "negative_prompt"),
        ({"multi_prompt": "a; b"}, "multi_prompt"),
        ({"generate_audio": True}, "generate_audio"),
        ({"end_image": "https://x.test/b.jpg"}, "end_image"),
    ],
)
def test_check_refuses(fields: dict[str, object], parameter: str) -> None:
    with pytest.raises(UnsupportedParameter) as info:
        check(KlingRequest.from_dict({"prompt": "p", **fields}))
    assert info.value.parameter == parameter
    assert parameter in str(info.value)
    assert "runbase" in str(info.value)


def test_check_accepts_runbase_fields() -> None:
    check(
        KlingRequest(
            prompt="p",
            mode="4k",
            aspect_ratio="1:1",
            duration=3,
            start_image="https://x.test/a.jpg",
            end_image="https://x.test/b.jpg",
        )
    )


# --- status ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("pending", JobStatus.SUBMITTED),
        ("processing", JobStatus.RUNNING),
        ("running", JobStatus.RUNNING),
        ("succeeded", JobStatus.SUCCEEDED),
        ("failed", JobStatus.FAILED),
        ("canceled", JobStatus.CANCELED),
        ("cancelled", JobStatus.CANCELED),
        ("SUCCEEDED", JobStatus.SUCCEEDED),
    ],
)
def test_status_values(raw: str, status: JobStatus) -> None:
    assert map_status({"id": RUN, "status": raw}).status is status


def test_succeeded_run_has_output_urls() -> None:
    reported = map_status(
        {
            "id": RUN,
            "status": "succeeded",
            "output": {"urls": ["https://cdn.test/1.mp4", "https://cdn.test/1.mp4", 7]},
            "createdAt": "2026-01-01T00:00:00Z",
            "completedAt": "2026-01-01T00:02:30Z",
        }
    )
    assert reported.output_urls == ["https://cdn.test/1.mp4"]
    assert (reported.progress, reported.error) == (100, None)
    assert reported.finished_at == datetime(2026, 1, 1, 0, 2, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "finished_at"),
    [
        ("2026-01-01T00:02:30.250+01:00", datetime(2025, 12, 31, 23, 2, 30, 250000, tzinfo=UTC)),
        ("2026-01-01T00:02:30", datetime(2026, 1, 1, 0, 2, 30, tzinfo=UTC)),  # no zone: UTC
        ("yesterday", None),
        (1767225750, None),
        (None, None),
    ],
)
def test_a_finished_run_says_when_it_ended_as_far_as_it_can_be_read(raw: object, finished_at: object) -> None:
    reported = map_status({"id": RUN, "status": "succeeded", "output": {"urls": []}, "completedAt": raw})
    assert reported.finished_at == finished_at


def test_a_running_run_has_not_ended_whatever_its_completed_at_says() -> None:
    reported = map_status({"id": RUN, "status": "processing", "completedAt": "2026-01-01T00:02:30Z"})
    assert reported.finished_at is None


@pytest.mark.parametrize("output", [None, {}, {"urls": "https://cdn.test/1.mp4"}, []])
def test_succeeded_run_without_readable_output(output: object) -> None:
    assert map_status({"id": RUN, "status": "succeeded", "output": output}).output_urls == []


@pytest.mark.parametrize(
    ("error", "message"),
    [
        ("generation failed", "generation failed"),
        ({"message": "upstream error", "code": "upstream_failed"}, "upstream error (upstream_failed)"),
        ({"message": "no code"}, "no code"),
        (None, "runbase reported the job failed without a message"),
    ],
)
def test_failed_run_error_string_or_object(error: object, message: str) -> None:
    reported = map_status({"id": RUN, "status": "failed", "error": error})
    assert reported.error == JobError(code="provider_failed", message=message)


@pytest.mark.parametrize(
    "body", [{"id": RUN, "status": "queued?"}, {"status": "pending"}, {"id": "", "status": "pending"}]
)
def test_unreadable_run_is_a_typed_error(body: dict[str, object]) -> None:
    with pytest.raises(UnexpectedResponse):
        map_status(body)


@pytest.mark.parametrize(
    ("body", "message", "code"),
    [
        ({"error": {"message": "Invalid input", "code": "invalid_input"}}, "Invalid input", "invalid_input"),
        ({"error": "plain"}, "plain", None),
        ({"message": "top level", "code": "x"}, "top level", "x"),
        ("text", "text", None),
        ({}, "error without a message", None),
    ],
)
def test_parse_error(body: object, message: str, code: str | None) -> None:
    parsed = parse_error(body)
    assert (parsed.message, parsed.code) == (message, code)


# --- errors over HTTP (MockTransport) ----------------------------------------------------------

Handler = Callable[[httpx.Request], httpx.Response]


class RecordingBudget:
    def __init__(self) -> None:
        self.acquired: list[str] = []
        self.penalties: list[tuple[str, float]] = []

    @contextlib.asynccontextmanager
    async def slot(self, key: str, *, within: float | None = None) -> AsyncIterator[None]:
        self.acquired.append(key)
        yield

    async def penalize(self, key: str, seconds: float) -> None:
        self.penalties.append((key, seconds))


def _client(handler: Handler, budget: RecordingBudget | None = None) -> RunbaseClient:
    return RunbaseClient(
        KEY,
        "https://runbase.test",
        transport=httpx.MockTransport(handler),
        budget=budget,
        clock=SteppingClock(),
    )


def _error(status: int, code: str, message: str = "refused") -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        body = {"error": {"message": message, "code": code}}
        return httpx.Response(status, json=body, headers={"x-request-id": "req_9"})

    return handle


@pytest.mark.anyio
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
async def test_documented_errors(status: int, code: str, error_type: type[ProviderError]) -> None:
    client = _client(_error(status, code, message=f"the {code} message"))
    with pytest.raises(error_type) as info:
        await client.get_status(RUN)
    assert type(info.value) is error_type
    assert (info.value.status_code, info.value.code, info.value.request_id) == (status, code, "req_9")
    assert f"the {code} message" in str(info.value)
    await client.aclose()


@pytest.mark.anyio
async def test_submit_sends_bearer_key_and_body() -> None:
    seen: list[httpx.Request] = []

    def accept(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200, json={"id": RUN, "model": "kling/kling-3.0", "status": "pending", "costUsd": 0.5}
        )

    client = _client(accept)
    reported = await client.submit("job_1", KlingRequest(prompt="p"), webhook_url="https://ignored.test")
    assert (reported.provider_job_id, reported.status) == (RUN, JobStatus.SUBMITTED)
    (request,) = seen
    assert (request.method, request.url.path) == ("POST", "/api/v1/runs")
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert "Idempotency-Key" not in request.headers
    assert json.loads(request.content) == build_body(KlingRequest(prompt="p"))
    await client.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(500, json={"error": {"message": "boom", "code": "internal_error"}}),
        httpx.Response(429, json={"error": {"message": "slow", "code": "RATE_LIMITED"}}),
        httpx.ReadTimeout("read timed out"),
        httpx.RemoteProtocolError("server hung up"),
    ],
)
async def test_submit_is_not_repeated_once_it_may_have_arrived(failure: httpx.Response | Exception) -> None:
    calls: list[int] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if isinstance(failure, Exception):
            raise failure
        return failure

    client = _client(handle)
    with pytest.raises((ProviderUnavailable, RateLimited)):
        await client.submit("job_1", KlingRequest(prompt="p"))
    assert len(calls) == 1
    await client.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("failure", [httpx.ConnectError("refused"), httpx.ConnectTimeout("timed out")])
async def test_submit_is_repeated_when_it_never_left(failure: Exception) -> None:
    calls: list[int] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            raise failure
        return httpx.Response(200, json={"id": RUN, "status": "pending"})

    client = _client(handle)
    assert (await client.submit("job_1", KlingRequest(prompt="p"))).provider_job_id == RUN
    assert len(calls) == 2
    await client.aclose()


@pytest.mark.anyio
async def test_submit_that_never_left_fails_as_not_sent() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    client = _client(refuse)
    with pytest.raises(NotSent):
        await client.submit("job_1", KlingRequest(prompt="p"))
    await client.aclose()


@pytest.mark.anyio
async def test_reads_are_retried_and_every_attempt_spends_the_budget() -> None:
    answers = [
        httpx.Response(500, json={"error": {"message": "boom", "code": "internal_error"}}),
        httpx.Response(429, json={"error": {"message": "slow", "code": "RATE_LIMITED"}}),
        httpx.Response(200, json={"id": RUN, "status": "processing"}),
    ]
    budget = RecordingBudget()
    client = _client(lambda request: answers.pop(0), budget)
    assert (await client.get_status(RUN)).status is JobStatus.RUNNING
    key = budget_key("runbase", KEY)
    assert budget.acquired == [key] * 3
    [(penalized, seconds)] = budget.penalties
    assert penalized == key
    assert 2.0 <= seconds <= 2.5  # the second attempt's backoff, with up to 25% jitter
    assert KEY not in key
    await client.aclose()


@pytest.mark.anyio
async def test_429_backs_off_exponentially_in_the_budget() -> None:
    budget = RecordingBudget()
    client = _client(_error(429, "RATE_LIMITED"), budget)
    with pytest.raises(RateLimited):
        await client.get_status(RUN)
    waits = [seconds for _, seconds in budget.penalties]
    # Doubling from 1 s, with up to 25% jitter each.
    assert all(nominal <= w <= nominal * 1.25 for nominal, w in zip([1, 2, 4, 8], waits, strict=True))
    await client.aclose()


@pytest.mark.anyio
async def test_usage_exceeded_is_not_retried_but_slows_the_key() -> None:
    budget = RecordingBudget()
    client = _client(_error(429, "USAGE_EXCEEDED"), budget)
    with pytest.raises(RateLimited):
        await client.get_status(RUN)
    assert len(budget.acquired) == 1
    assert len(budget.penalties) == 1
    await client.aclose()


@pytest.mark.anyio
async def test_key_never_reaches_messages_or_logs() -> None:
    client = _client(_error(401, "invalid_api_key", message=f"bad key {KEY}"))
    with capture_logs() as logs, pytest.raises(AuthenticationError) as info:
        await client.get_status(RUN)
    assert KEY not in str(info.value)
    assert logs
    assert KEY not in repr(logs)
    await client.aclose()
