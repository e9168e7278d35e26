"""Sinks through the whole receiver: storage then Slack (`after`), and Slack's Retry-After honoured."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from test_handler_slack import block_problems

from receiver.background import BackgroundServer
from receiver.clock import VirtualClock
from tests.support.stack import receiver_stack


class Slack:
    """Checks each payload as Slack would; answers the queued (status, headers) first, then 200 ok.
    Records each post with the time on `clock` when it came."""

    def __init__(self, clock: VirtualClock, *answers: tuple[int, dict[str, str]]) -> None:
        self.clock = clock
        self.answers = list(answers)
        self.posts: list[tuple[float, dict[str, Any]]] = []
        self.changed = threading.Condition()

    async def hook(self, request: Request) -> PlainTextResponse:
        payload = json.loads(await request.body())
        with self.changed:
            self.posts.append((self.clock.monotonic(), payload))
            self.changed.notify_all()
        if problems := block_problems(payload):
            return PlainTextResponse("invalid_blocks: " + "; ".join(problems), status_code=400)
        status, headers = self.answers.pop(0) if self.answers else (200, {})
        return PlainTextResponse(
            "ok" if status == 200 else "rate_limited", status_code=status, headers=headers
        )

    def wait_for(self, count: int, timeout: float = 15.0) -> list[tuple[float, dict[str, Any]]]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.posts) >= count, timeout), self.posts
            return list(self.posts)


def test_after_storage_the_slack_message_links_the_stored_copy(tmp_path: Path, wait) -> None:
    clock = VirtualClock()
    slack = Slack(clock)
    with BackgroundServer(Starlette(routes=[Route("/hook", slack.hook, methods=["POST"])])) as server:
        handlers = [
            {"name": "chat", "type": "slack", "webhook_url": f"{server.url}/hook", "after": ["videos"]},
            {"name": "videos", "type": "storage", "target": str(tmp_path / "videos"),
             "public_url": "https://cdn.example.com/kling/", "allow_private_hosts": True},
            {"name": "rows", "type": "database", "url": f"sqlite:///{tmp_path / 'events.db'}"},
        ]  # fmt: skip
        with receiver_stack(tmp_path, None, handlers=handlers, clock=clock) as stack:
            job = stack.submit("apiframe", metadata={"campaign": "spring"})
            clock.advance(0.3)
            payload = slack.wait_for(1)[0][1]
            done = wait(lambda: stack.settled(job["id"]))

    stored = tmp_path / "videos" / job["id"] / "0.mp4"
    text = json.dumps(payload)
    assert f"https://cdn.example.com/kling/{job['id']}/0.mp4" in text
    assert stored.read_bytes()[4:8] == b"ftyp"
    assert json.loads((tmp_path / "videos" / f"{job['id']}.json").read_text())["job"]["id"] == job["id"]
    assert {d["handler"] for d in done["deliveries"]} == {"chat", "videos", "rows"}
    with sqlite3.connect(tmp_path / "events.db") as conn:
        rows = conn.execute("SELECT job_id, status FROM generation_events").fetchall()
    assert rows == [(job["id"], "succeeded")]


def test_slack_429_with_retry_after_2_is_retried_2_seconds_later(tmp_path: Path, wait) -> None:
    clock = VirtualClock()
    slack = Slack(clock, (429, {"Retry-After": "2"}))
    with BackgroundServer(Starlette(routes=[Route("/hook", slack.hook, methods=["POST"])])) as server:
        handlers = [{"name": "chat", "type": "slack", "webhook_url": f"{server.url}/hook", "retry_base": 60}]
        with receiver_stack(tmp_path, None, handlers=handlers, clock=clock) as stack:
            job = stack.submit("apiframe")
            clock.advance(0.3)
            slack.wait_for(1)
            (first, _), (second, _) = stack.run_until(lambda: len(slack.posts) >= 2 and slack.posts)
            done = wait(lambda: stack.settled(job["id"]))

    assert (first, second) == (0.3, pytest.approx(2.3))
    assert done["deliveries"][0]["attempts"] == 2
