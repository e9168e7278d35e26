"""`forward` against a real HTTP receiver that checks signatures with the standardwebhooks package."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from handlers import PermanentError, RetryLater
from handlers._http import DeliveryFailed
from handlers.forward import ForwardHandler
from receiver.background import BackgroundServer
from receiver.clock import VirtualClock
from receiver.events import Job, JobStatus, make_event

pytestmark = pytest.mark.anyio
SECRET = "whsec_" + "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0xMjM0NTY="


@dataclass
class Receiver:
    """Answers the statuses queued in `answers` (then 200) and keeps what it verified."""

    url: str = ""
    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    verified: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    async def hook(self, request: Request) -> PlainTextResponse:
        body = await request.body()
        self.headers.append(dict(request.headers))
        try:
            payload = Webhook(SECRET).verify(body, dict(request.headers))
        except Exception as exc:
            return PlainTextResponse(f"bad signature: {exc}", status_code=401)
        self.verified.append(payload)
        status, headers = self.answers.pop(0) if self.answers else (200, {})
        return PlainTextResponse("answer", status_code=status, headers=headers)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()
    with BackgroundServer(Starlette(routes=[Route("/hook", state.hook, methods=["POST"])])) as server:
        state.url = server.url + "/hook"
        yield state


NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def an_event() -> dict[str, Any]:
    job = Job(
        id="job_fwd",
        provider="apiframe",
        status=JobStatus.SUCCEEDED,
        request={"prompt": "Un renard roux court dans la neige — 雪"},
        created_at=NOW,
        completed_at=NOW,
        output_urls=["https://cdn.example.com/v.mp4"],
    )
    return make_event(job, "evt_forward_1", now=NOW)


async def test_posts_the_event_signed_per_standard_webhooks(receiver: Receiver) -> None:
    # A minute ago: inside the verifier's tolerance, and plainly not the real time.
    clock = VirtualClock(datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1))
    handler = ForwardHandler(receiver.url, SECRET, headers={"x-team": "video"}, clock=clock)
    event = an_event()
    try:
        assert await handler.handle(event) == {"status_code": 200}
    finally:
        await handler.aclose()
    assert receiver.verified == [json.loads(json.dumps(event))]
    sent = receiver.headers[0]
    assert sent["webhook-id"] == "evt_forward_1"
    assert sent["webhook-timestamp"] == str(int(clock().timestamp()))
    assert sent["x-team"] == "video"
    assert sent["content-type"] == "application/json"


async def test_a_wrong_secret_is_refused_by_the_receiver(receiver: Receiver) -> None:
    other = "whsec_" + "b3RoZXItc2VjcmV0LW5vdC10aGUtcmlnaHQtb25lIQ=="
    handler = ForwardHandler(receiver.url, other)
    try:
        with pytest.raises(PermanentError, match="answered 401: bad signature") as caught:
            await handler.handle(an_event())
    finally:
        await handler.aclose()
    assert other.removeprefix("whsec_") not in str(caught.value)
    assert receiver.verified == []


async def test_statuses_map_to_retry_wait_or_dead(receiver: Receiver) -> None:
    receiver.answers = [(503, {}), (429, {"retry-after": "7"}), (422, {}), (200, {})]
    handler = ForwardHandler(receiver.url, SECRET)
    event = an_event()
    try:
        with pytest.raises(DeliveryFailed, match="answered 503"):
            await handler.handle(event)
        with pytest.raises(RetryLater) as later:
            await handler.handle(event)
        assert later.value.delay == 7
        with pytest.raises(PermanentError, match="answered 422"):
            await handler.handle(event)
        assert await handler.handle(event) == {"status_code": 200}
    finally:
        await handler.aclose()
    assert {h["webhook-id"] for h in receiver.headers} == {"evt_forward_1"}


async def test_an_unreachable_receiver_is_retried() -> None:
    with BackgroundServer(Starlette()) as server:
        url = server.url + "/hook"
    handler = ForwardHandler(url, SECRET)
    try:
        with pytest.raises(DeliveryFailed, match="ConnectError"):
            await handler.handle(an_event())
    finally:
        await handler.aclose()
