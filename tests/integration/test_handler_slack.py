"""`slack` against a local incoming webhook that checks payloads the way Slack does."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from handlers import PermanentError, RetryLater
from handlers._http import DeliveryFailed
from handlers.slack import SlackHandler
from receiver.background import BackgroundServer
from receiver.events import Job, JobError, JobStatus, make_event

pytestmark = pytest.mark.anyio
START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def block_problems(payload: Any) -> list[str]:
    """What Slack's incoming webhooks would reject, as far as its documented limits go."""
    if not isinstance(payload, dict):
        return ["not an object"]
    problems = []
    if not isinstance(payload.get("text"), str) or not payload["text"].strip():
        problems.append("no fallback text")
    blocks = payload.get("blocks")
    if not isinstance(blocks, list) or not 1 <= len(blocks) <= 50:
        return [*problems, "blocks must be a list of 1 to 50"]

    def text_ok(obj: Any, limit: int, types: tuple[str, ...] = ("plain_text", "mrkdwn")) -> bool:
        return (
            isinstance(obj, dict)
            and obj.get("type") in types
            and isinstance(obj.get("text"), str)
            and 0 < len(obj["text"]) <= limit
        )

    for n, block in enumerate(blocks):
        kind = block.get("type")
        if kind == "header":
            ok = text_ok(block.get("text"), 150, ("plain_text",))
        elif kind == "section":
            fields = block.get("fields", [])
            ok = ("text" in block or fields) and len(fields) <= 10
            ok = ok and ("text" not in block or text_ok(block["text"], 3000))
            ok = ok and all(text_ok(f, 2000) for f in fields)
        elif kind == "context":
            elements = block.get("elements", [])
            ok = 1 <= len(elements) <= 10 and all(text_ok(e, 3000) for e in elements)
        elif kind == "actions":
            elements = block.get("elements", [])
            ok = 1 <= len(elements) <= 25 and all(
                e.get("type") == "button"
                and text_ok(e.get("text"), 75, ("plain_text",))
                and 0 < len(e.get("url", "")) <= 3000
                for e in elements
            )
        elif kind == "divider":
            ok = True
        else:
            ok = False
        if not ok:
            problems.append(f"block {n} ({kind}) is invalid")
    return problems


class SlackLike:
    """Accepts valid messages ("ok"); answers 400 invalid_blocks / invalid_payload otherwise."""

    def __init__(self) -> None:
        self.accepted: list[dict[str, Any]] = []

    async def hook(self, request: Request) -> PlainTextResponse:
        try:
            payload = json.loads(await request.body())
        except ValueError:
            return PlainTextResponse("invalid_payload", status_code=400)
        problems = block_problems(payload)
        if problems:
            return PlainTextResponse("invalid_blocks: " + "; ".join(problems), status_code=400)
        self.accepted.append(payload)
        return PlainTextResponse("ok")


class Scripted:
    """Answers the queued (status, headers, body) in order."""

    def __init__(self, *answers: tuple[int, dict[str, str], str]) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def hook(self, request: Request) -> PlainTextResponse:
        await request.body()
        self.calls += 1
        status, headers, body = self.answers.pop(0)
        return PlainTextResponse(body, status_code=status, headers=headers)


def serve(endpoint: Any) -> BackgroundServer:
    return BackgroundServer(Starlette(routes=[Route("/services/T0/B0/hook", endpoint, methods=["POST"])]))


@pytest.fixture
def slack() -> Iterator[tuple[SlackLike, str]]:
    state = SlackLike()
    with serve(state.hook) as server:
        yield state, server.url + "/services/T0/B0/hook"


def an_event(
    status: JobStatus = JobStatus.SUCCEEDED, prompt: str = "A paper boat sails a flooded street"
) -> dict[str, Any]:
    job = Job(
        id="job_slack",
        provider="apiframe",
        status=status,
        request={"prompt": prompt, "mode": "pro", "aspect_ratio": None, "duration": None},
        provider_job_id="5b1f0c1e-0000-4000-8000-000000000000",
        output_urls=["https://cdn.apiframe.ai/v/boat.mp4"] if status is JobStatus.SUCCEEDED else [],
        error=None if status is JobStatus.SUCCEEDED else JobError("generation_failed", "Model error <500>"),
        created_at=START,
        completed_at=START + timedelta(seconds=148),
        completed_via="webhook",
    )
    return make_event(job, "evt_slack", now=START)


async def test_success_and_failure_messages_are_accepted(slack: tuple[SlackLike, str]) -> None:
    state, url = slack
    handler = SlackHandler(url, channel="#videos", username="Kling bot", icon_emoji=":clapper:")
    stored = an_event()
    stored["reports"] = {"copy": {"stored_urls": ["https://media.example.com/job_slack/0.mp4"]}}
    try:
        await handler.handle(stored)
        await handler.handle(an_event(JobStatus.FAILED, prompt="x" * 20_000))
    finally:
        await handler.aclose()
    success, failure = state.accepted
    assert success["blocks"][0]["text"]["text"].startswith(":white_check_mark:")
    buttons = next(b for b in success["blocks"] if b["type"] == "actions")["elements"]
    assert buttons[0]["url"] == "https://media.example.com/job_slack/0.mp4"
    assert success["channel"] == "#videos"
    assert failure["blocks"][0]["text"]["text"].startswith(":x:")
    assert "generation_failed" in json.dumps(failure["blocks"])


def test_the_local_slack_is_strict(slack: tuple[SlackLike, str]) -> None:
    state, url = slack
    bad = [
        {"blocks": [{"type": "divider"}]},
        {"text": "t", "blocks": [{"type": "header", "text": {"type": "mrkdwn", "text": "h"}}]},
        {"text": "t", "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}]},
        {"text": "t", "blocks": [{"type": "image", "image_url": "https://x/y.png"}]},
        {"text": "t", "blocks": [{"type": "divider"}] * 51},
    ]
    for payload in bad:
        answer = httpx.post(url, json=payload)
        assert answer.status_code == 400
        assert answer.text.startswith("invalid_blocks")
    assert httpx.post(url, content=b"{not json").text == "invalid_payload"
    assert state.accepted == []


async def test_server_errors_are_retried_until_one_succeeds() -> None:
    script = Scripted((500, {}, "rollup_error"), (500, {}, "rollup_error"), (200, {}, "ok"))
    with serve(script.hook) as server:
        handler = SlackHandler(server.url + "/services/T0/B0/hook")
        try:
            for _ in range(2):
                with pytest.raises(DeliveryFailed, match="slack answered 500: rollup_error") as caught:
                    await handler.handle(an_event())
                assert not isinstance(caught.value, PermanentError | RetryLater)
            assert await handler.handle(an_event()) is None
        finally:
            await handler.aclose()
    assert script.calls == 3


async def test_rate_limit_waits_for_retry_after() -> None:
    script = Scripted((429, {"Retry-After": "2"}, "rate_limited"))
    with serve(script.hook) as server:
        handler = SlackHandler(server.url + "/services/T0/B0/hook")
        try:
            with pytest.raises(RetryLater) as caught:
                await handler.handle(an_event())
        finally:
            await handler.aclose()
    assert caught.value.delay == 2


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, "invalid_payload"),
        (403, "action_prohibited"),
        (404, "no_service"),
        (410, "channel_is_archived"),
    ],
)
async def test_a_revoked_or_refused_hook_is_permanent(status: int, body: str) -> None:
    script = Scripted((status, {}, body))
    with serve(script.hook) as server:
        url = server.url + "/services/T0/B0/hook"
        handler = SlackHandler(url)
        try:
            with pytest.raises(PermanentError) as caught:
                await handler.handle(an_event())
        finally:
            await handler.aclose()
    assert str(caught.value) == f"slack answered {status}: {body}"
    assert "/services/" not in str(caught.value)
