"""Apiframe: body building, refusals, status and webhook mapping, signatures, and error mapping."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest
from structlog.testing import capture_logs

from receiver.events import JobError, JobStatus
from receiver.generation import KlingRequest
from receiver.providers import ApiframeClient, RunbaseClient, make_client
from receiver.providers.apiframe import (
    build_body,
    check,
    idempotency_key,
    map_status,
    parse_webhook,
    result_urls,
    verify_signature,
)
from receiver.providers.base import (
    AuthenticationError,
    Conflict,
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
from receiver.providers.http import parse_retry_after, transient
from tests.support.clock import SteppingClock

KEY = "afk_test_secret_key_0123456789"
JOB = "b2c3d4e5-f6a7-8901-bcde-f23456789012"
HOOK = "https://hooks.example.com/hooks/apiframe/tok"


# --- body --------------------------------------------------------------------------------------


def test_body_holds_prompt_model_defaults_and_webhook() -> None:
    body = build_body(KlingRequest(prompt="a lamp"), HOOK)
    assert body == {
        "prompt": "a lamp",
        "model": "kling-3.0",
        "klingParams": {"mode": "pro", "generate_audio": False},
        "webhookUrl": HOOK,
    }


def test_body_carries_every_set_kling_param() -> None:
    request = KlingRequest(
        prompt="a lamp",
        mode="4k",
        start_image="https://x.test/a.jpg",
        end_image="https://x.test/b.jpg",
        generate_audio=True,
        negative_prompt="blur",
        multi_prompt="shot 1; shot 2",
    )
    assert build_body(request, None)["klingParams"] == {
        "mode": "4k",
        "generate_audio": True,
        "start_image": "https://x.test/a.jpg",
        "end_image": "https://x.test/b.jpg",
        "negative_prompt": "blur",
        "multi_prompt": "shot 1; shot 2",
    }


def test_body_without_webhook_has_no_webhook_field() -> None:
    assert set(build_body(KlingRequest(prompt="p"), None)) == {"prompt", "model", "klingParams"}


def test_body_webhook_field_follows_the_seed_page_when_asked() -> None:
    body = build_body(KlingRequest(prompt="p"), HOOK, webhook_field="webhook_url")
    assert body["webhook_url"] == HOOK
    assert "webhookUrl" not in body


@pytest.mark.parametrize(("name", "value"), [("aspect_ratio", "9:16"), ("duration", 10)])
def test_check_refuses_what_has_no_parameter(name: str, value: object) -> None:
    request = KlingRequest.from_dict({"prompt": "p", name: value})
    with pytest.raises(UnsupportedParameter) as info:
        check(request)
    assert info.value.parameter == name
    assert name in str(info.value)
    assert "apiframe" in str(info.value)
    assert "no parameter" in str(info.value)


def test_check_accepts_every_documented_param() -> None:
    check(
        KlingRequest(
            prompt="p",
            mode="standard",
            start_image="https://x.test/a.jpg",
            end_image="https://x.test/b.jpg",
            generate_audio=True,
            negative_prompt="n",
            multi_prompt="m",
        )
    )


def test_idempotency_key_is_deterministic_and_short() -> None:
    assert idempotency_key("job_abc") == idempotency_key("job_abc")
    assert idempotency_key("job_abc") != idempotency_key("job_abd")
    assert "job_abc" in idempotency_key("job_abc")
    long_key = idempotency_key("j" * 400)
    assert len(long_key) <= 255
    assert long_key == idempotency_key("j" * 400)
    assert idempotency_key("job with spaces/é").isascii()


# --- status ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("QUEUED", JobStatus.SUBMITTED),
        ("PROCESSING", JobStatus.RUNNING),
        ("COMPLETED", JobStatus.SUCCEEDED),
        ("FAILED", JobStatus.FAILED),
        ("CANCELLED", JobStatus.CANCELED),
        ("CANCELED", JobStatus.CANCELED),
        ("processing", JobStatus.RUNNING),
    ],
)
def test_status_values(raw: str, status: JobStatus) -> None:
    assert map_status({"id": JOB, "status": raw}).status is status


def test_running_job_reports_progress() -> None:
    reported = map_status({"id": JOB, "status": "PROCESSING", "progress": 42, "result": None})
    assert (reported.progress, reported.output_urls, reported.error) == (42, [], None)


@pytest.mark.parametrize("progress", [-5, 140, 55.7, "50", True])
def test_progress_is_a_percentage_or_none(progress: object) -> None:
    reported = map_status({"id": JOB, "status": "PROCESSING", "progress": progress})
    assert reported.progress in {0, 100, 55, None}
    assert reported.progress is None or 0 <= reported.progress <= 100


@pytest.mark.parametrize(
    ("result", "urls"),
    [
        ({"videoUrl": "https://cdn.test/v.mp4"}, ["https://cdn.test/v.mp4"]),
        (
            {"videos": ["https://cdn.test/1.mp4", "https://cdn.test/2.mp4"]},
            ["https://cdn.test/1.mp4", "https://cdn.test/2.mp4"],
        ),
        ("https://cdn.test/v.mp4", ["https://cdn.test/v.mp4"]),
        (
            {"videoUrl": "https://cdn.test/v.mp4", "videos": ["https://cdn.test/v.mp4"]},
            ["https://cdn.test/v.mp4"],
        ),
        (None, []),
        ({"videos": [None, 3, ""]}, []),
    ],
)
def test_result_shapes(result: object, urls: list[str]) -> None:
    assert result_urls(result) == urls
    reported = map_status({"id": JOB, "status": "COMPLETED", "progress": 100, "result": result})
    assert reported.status is JobStatus.SUCCEEDED
    assert reported.output_urls == urls
    assert reported.progress == 100


@pytest.mark.parametrize(
    ("error", "message"),
    [
        ("content policy", "content policy"),
        ({"message": "upstream timeout", "code": "E_UPSTREAM"}, "upstream timeout (E_UPSTREAM)"),
        (None, "apiframe reported the job failed without a message"),
    ],
)
def test_failed_job_carries_the_provider_message(error: object, message: str) -> None:
    reported = map_status({"id": JOB, "status": "FAILED", "error": error})
    assert reported.status is JobStatus.FAILED
    assert reported.error == JobError(code="provider_failed", message=message)
    assert reported.output_urls == []


def test_canceled_job_says_so() -> None:
    reported = map_status({"id": JOB, "status": "CANCELLED"})
    assert reported.error is not None
    assert reported.error.code == "canceled"


@pytest.mark.parametrize(
    "body", [{"id": JOB, "status": "EXPLODED"}, {"id": JOB}, {"status": "QUEUED"}, {"id": JOB, "status": 3}]
)
def test_unreadable_job_is_a_typed_error(body: dict[str, object]) -> None:
    with pytest.raises(UnexpectedResponse):
        map_status(body)


def test_map_status_keeps_the_raw_body() -> None:
    body = {"id": JOB, "status": "QUEUED", "creditCost": 10}
    assert map_status(body).raw == body


# --- webhooks ----------------------------------------------------------------------------------


def test_webhook_completed() -> None:
    reported = parse_webhook(
        {
            "event": "completed",
            "jobId": JOB,
            "status": "COMPLETED",
            "progress": 100,
            "result": {"videoUrl": "https://cdn.test/v.mp4"},
            "model": "kling-3.0",
            "creditCost": 10,
            "completedAt": "2026-01-01T00:00:00Z",
        }
    )
    assert (reported.provider_job_id, reported.status) == (JOB, JobStatus.SUCCEEDED)
    assert reported.output_urls == ["https://cdn.test/v.mp4"]
    assert reported.finished_at == datetime(2026, 1, 1, tzinfo=UTC)


def test_webhook_failed() -> None:
    reported = parse_webhook(
        {"event": "failed", "jobId": JOB, "status": "FAILED", "error": "nsfw", "model": "kling-3.0"}
    )
    assert reported.status is JobStatus.FAILED
    assert reported.error == JobError(code="provider_failed", message="nsfw")


def test_webhook_progress() -> None:
    reported = parse_webhook(
        {"event": "progress", "jobId": JOB, "status": "PROCESSING", "progress": 30, "model": "kling-3.0"}
    )
    assert (reported.status, reported.progress) == (JobStatus.RUNNING, 30)


def test_webhook_event_alone_names_the_status() -> None:
    assert parse_webhook({"event": "completed", "jobId": JOB}).status is JobStatus.SUCCEEDED


@pytest.mark.parametrize(
    "body", [{"event": "completed", "status": "COMPLETED"}, {"jobId": JOB, "event": "odd"}]
)
def test_unusable_webhook_is_a_typed_error(body: dict[str, object]) -> None:
    with pytest.raises(UnexpectedResponse):
        parse_webhook(body)


def _sign(key: str, raw: bytes) -> str:
    return "sha256=" + hmac.new(hashlib.sha256(key.encode()).digest(), raw, hashlib.sha256).hexdigest()


def test_signature_verifies() -> None:
    raw = b'{"event":"completed","jobId":"x"}'
    assert verify_signature(KEY, raw, _sign(KEY, raw))
    assert verify_signature(KEY, raw, _sign(KEY, raw).upper().replace("SHA256=", "sha256="))


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        _sign(KEY, b"other body"),
        _sign("afk_other", b"{}"),
        _sign(KEY, b"{}")[len("sha256=") :],
        "sha256=zz",
        "sha256=é",
    ],
)
def test_signature_refuses(header: str | None) -> None:
    assert not verify_signature(KEY, b"{}", header)


def test_signature_uses_the_digest_of_the_key_not_the_key() -> None:
    raw = b"{}"
    keyed_with_plain_key = "sha256=" + hmac.new(KEY.encode(), raw, hashlib.sha256).hexdigest()
    assert not verify_signature(KEY, raw, keyed_with_plain_key)


# --- errors over HTTP (MockTransport) ----------------------------------------------------------

Handler = Callable[[httpx.Request], httpx.Response]


def _client(handler: Handler, **options: object) -> ApiframeClient:
    options.setdefault("clock", SteppingClock())  # retry waits pass at once
    return ApiframeClient(KEY, "https://api.test", transport=httpx.MockTransport(handler), **options)  # type: ignore[arg-type]


def _answer(status: int, body: object, **headers: str) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, headers={"x-request-id": "req_1", **headers})

    return handle


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "body", "error_type"),
    [
        (
            400,
            {"error": "Invalid request", "details": [{"path": "prompt", "message": "too long"}]},
            InvalidRequest,
        ),
        (401, {"error": "Invalid API key"}, AuthenticationError),
        (
            402,
            {"error": "Insufficient credits", "creditsRequired": 10, "creditsAvailable": 2.5},
            InsufficientCredits,
        ),
        (403, {"error": "Forbidden"}, Forbidden),
        (404, {"error": "Job not found"}, NotFound),
        (409, {"error": "Idempotency key reused with a different body"}, Conflict),
        (429, {"error": "Too many requests"}, RateLimited),
        (503, {"error": "Service unavailable"}, ProviderUnavailable),
        (418, {"error": "teapot"}, ProviderError),
    ],
)
async def test_error_statuses_map_to_typed_errors(
    status: int, body: dict[str, object], error_type: type[ProviderError]
) -> None:
    client = _client(_answer(status, body, **{"Retry-After": "7"}))
    with pytest.raises(error_type) as info:
        await client.get_status(JOB)
    error = info.value
    assert type(error) is error_type
    assert error.status_code == status
    assert error.request_id == "req_1"
    assert str(body["error"]) in str(error)
    assert "req_1" in str(error)
    await client.aclose()


@pytest.mark.anyio
async def test_400_keeps_details() -> None:
    details = [{"path": "prompt", "message": "too long"}]
    client = _client(_answer(400, {"error": "Invalid request", "details": details}))
    with pytest.raises(InvalidRequest) as info:
        await client.submit("job_1", KlingRequest(prompt="p"))
    assert info.value.details == details
    assert "too long" in str(info.value)
    await client.aclose()


@pytest.mark.anyio
async def test_402_names_the_credit_figures() -> None:
    client = _client(
        _answer(402, {"error": "Insufficient credits", "creditsRequired": 10, "creditsAvailable": 2.5})
    )
    with pytest.raises(InsufficientCredits) as info:
        await client.submit("job_1", KlingRequest(prompt="p"))
    assert (info.value.credits_required, info.value.credits_available) == (10, 2.5)
    assert "10" in str(info.value)
    assert "2.5" in str(info.value)
    await client.aclose()


@pytest.mark.anyio
async def test_429_carries_retry_after() -> None:
    client = _client(_answer(429, {"error": "slow down"}, **{"Retry-After": "12"}), max_retry_after=5.0)
    with pytest.raises(RateLimited) as info:
        await client.get_status(JOB)
    assert info.value.retry_after == 12.0
    await client.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(502, text="<html>bad gateway</html>"),
        httpx.Response(200, text="not json"),
        httpx.Response(200, json=["a", "list"]),
        httpx.Response(200, json={"id": JOB, "status": "WHAT"}),
    ],
)
async def test_unreadable_answers_are_typed_errors(response: httpx.Response) -> None:
    client = _client(lambda request: response)
    with pytest.raises(ProviderUnavailable):
        await client.get_status(JOB)
    await client.aclose()


@pytest.mark.anyio
async def test_connection_failure_is_not_sent() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = _client(refuse)
    with pytest.raises(NotSent):
        await client.get_status(JOB)
    await client.aclose()


@pytest.mark.anyio
async def test_read_timeout_is_unavailable_but_not_not_sent() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    client = _client(slow)
    with pytest.raises(ProviderUnavailable) as info:
        await client.get_status(JOB)
    assert not isinstance(info.value, NotSent)
    await client.aclose()


@pytest.mark.anyio
async def test_submit_sends_key_idempotency_key_and_documented_body() -> None:
    seen: list[httpx.Request] = []

    def accept(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"jobId": JOB, "status": "QUEUED"})

    client = _client(accept)
    reported = await client.submit("job_1", KlingRequest(prompt="p"), HOOK)
    assert (reported.provider_job_id, reported.status) == (JOB, JobStatus.SUBMITTED)
    (request,) = seen
    assert (request.method, request.url.path) == ("POST", "/v2/videos/generate")
    assert request.headers["X-API-Key"] == KEY
    assert request.headers["Idempotency-Key"] == idempotency_key("job_1")
    assert json.loads(request.content) == build_body(KlingRequest(prompt="p"), HOOK)
    await client.aclose()


@pytest.mark.anyio
async def test_submit_refuses_before_sending() -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing may be sent")

    client = _client(fail)
    with pytest.raises(UnsupportedParameter):
        await client.submit("job_1", KlingRequest(prompt="p", duration=5))
    await client.aclose()


@pytest.mark.anyio
async def test_submit_is_retried_after_503_with_the_same_idempotency_key() -> None:
    keys: list[str] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["Idempotency-Key"])
        if len(keys) < 3:
            return httpx.Response(503, json={"error": "busy"})
        return httpx.Response(202, json={"jobId": JOB, "status": "QUEUED"})

    client = _client(flaky)
    assert (await client.submit("job_1", KlingRequest(prompt="p"))).provider_job_id == JOB
    assert keys == [idempotency_key("job_1")] * 3
    await client.aclose()


@pytest.mark.anyio
async def test_refusals_are_not_retried() -> None:
    calls: list[int] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(401, json={"error": "Invalid API key"})

    client = _client(refuse)
    with pytest.raises(AuthenticationError):
        await client.get_status(JOB)
    assert len(calls) == 1
    await client.aclose()


@pytest.mark.anyio
async def test_key_never_reaches_messages_or_logs() -> None:
    def echo_key(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": f"Invalid API key {KEY}", "code": KEY})

    client = _client(echo_key)
    with capture_logs() as logs, pytest.raises(AuthenticationError) as info:
        await client.get_status(JOB)
    assert KEY not in str(info.value)
    assert KEY not in repr(info.value)
    assert KEY not in str(info.value.to_job_error())
    assert logs
    assert KEY not in repr(logs)
    await client.aclose()


@pytest.mark.anyio
async def test_key_never_reaches_logs_of_retries() -> None:
    def busy(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"error": f"busy {KEY}"})

    client = _client(busy)
    with capture_logs() as logs, pytest.raises(ProviderUnavailable):
        await client.get_status(JOB)
    assert any(entry["event"] == "provider_retry_scheduled" for entry in logs)
    assert KEY not in repr(logs)
    await client.aclose()


@pytest.mark.anyio
async def test_key_is_sent_without_surrounding_blanks() -> None:
    seen: list[httpx.Request] = []

    def accept(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": JOB, "status": "QUEUED"})

    client = ApiframeClient(f"  {KEY}\n", "https://api.test", transport=httpx.MockTransport(accept))
    await client.get_status(JOB)
    assert seen[0].headers["X-API-Key"] == KEY
    raw = b"{}"
    assert verify_signature(f"{KEY}\n", raw, _sign(KEY, raw))
    await client.aclose()


@pytest.mark.parametrize(
    "key", ["", "   ", "afk_has\nnewline_secret", "afk_ünicode_secret", "afk_in ner_secret"]
)
def test_unusable_keys_are_refused_without_echo(key: str) -> None:
    with pytest.raises(ValueError, match="apiframe") as info:
        ApiframeClient(key)
    assert "secret" not in str(info.value)


# --- retry timing (pure) -----------------------------------------------------------------------


def test_retry_after_seconds_and_dates() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("3", now) == 3.0
    assert parse_retry_after("0", now) == 0.0
    assert parse_retry_after("-2", now) == 0.0
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:30 GMT", now=now) == 30.0
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("nan", now) is None


def test_hook_waits_retry_after_and_retries_only_transient_errors() -> None:
    hook = transient(max_retry_after=60)
    assert hook(RateLimited("apiframe", "slow", retry_after=7.0)) == 7.0
    assert hook(RateLimited("apiframe", "slow", retry_after=600.0)) is False
    assert hook(RateLimited("apiframe", "slow")) is True
    assert hook(ProviderUnavailable("apiframe", "503")) is True
    assert hook(NotSent("apiframe", "refused")) is True
    assert hook(UnexpectedResponse("apiframe", "odd")) is False
    assert hook(Conflict("apiframe", "409")) is False
    assert hook(ValueError("bug")) is False


# --- factory -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_make_client() -> None:
    apiframe = make_client("apiframe", api_key=KEY, webhook_field="webhook_url")
    runbase = make_client("runbase", api_key="rb_key", base_url="http://127.0.0.1:1")
    assert isinstance(apiframe, ApiframeClient)
    assert isinstance(runbase, RunbaseClient)
    assert (apiframe.name, runbase.name) == ("apiframe", "runbase")
    with pytest.raises(ValueError, match="unknown provider"):
        make_client("other", api_key=KEY)
    await apiframe.aclose()
    await runbase.aclose()
