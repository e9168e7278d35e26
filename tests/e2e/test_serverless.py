"""The AWS Lambda entry points, invoked as Lambda would: API Gateway events through Mangum, then the
scheduled tick, with the emulators and the forward target on loopback."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from conftest import ADMIN, RUNBASE_KEY, World, wait_until

from receiver.signing import WebhookSigner

SECRET = "serverless-secret-value"


def api_gateway_event(
    method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) event, as Lambda hands it to the function."""
    return {
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "",
        "headers": {"host": "hooks.example.com", "content-type": "application/json", **(headers or {})},
        "requestContext": {
            "accountId": "123456789012", "apiId": "api", "domainName": "hooks.example.com", "stage": "$default",
            "requestId": "req", "routeKey": "$default", "time": "01/Jan/2026:00:00:00 +0000", "timeEpoch": 0,
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.9", "userAgent": "t"},
        },
        "body": body.decode(), "isBase64Encoded": False,
    }  # fmt: skip


@pytest.fixture
def serverless(world: World, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    for name, value in {
        **world.env,
        "RECEIVER_SECRET": SECRET,
        "RECEIVER_PUBLIC_URL": "https://hooks.example.com",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(world.tmp)
    sys.modules.pop("receiver.serverless", None)
    module = importlib.import_module("receiver.serverless")  # Lambda's init phase
    try:
        yield module
    finally:
        module.shutdown()
        asyncio.set_event_loop(None)


@pytest.mark.parametrize("world", [{"apiframe": {"webhook": "drop"}}], indirect=True)
def test_lambda_handler_takes_webhooks_and_the_scheduled_tick_delivers(
    world: World, serverless: ModuleType
) -> None:
    admin = {"authorization": f"Bearer {ADMIN}"}
    health = serverless.handler(api_gateway_event("GET", "/healthz"), None)
    submitted = {}
    for provider in ("apiframe", "runbase"):
        body = json.dumps({"provider": provider, "prompt": "a fox"}).encode()
        answer = serverless.handler(api_gateway_event("POST", "/jobs", body, admin), None)
        assert answer["statusCode"] == 202, answer["body"]
        submitted[provider] = json.loads(answer["body"])
    apiframe_job, runbase_job = submitted["apiframe"], submitted["runbase"]
    token = WebhookSigner(SECRET).token(apiframe_job["id"], "apiframe")
    webhook = json.dumps({
        "event": "completed", "jobId": apiframe_job["provider_job_id"], "status": "COMPLETED", "progress": 100,
        "result": {"videoUrl": "https://cdn.example.com/v.mp4"}, "model": "kling-3.0",
    }).encode()  # fmt: skip
    hooked = serverless.handler(api_gateway_event("POST", f"/hooks/apiframe/{token}", webhook), None)
    wait_until(lambda: _runbase_status(world, runbase_job["provider_job_id"]) == "succeeded")
    counts = serverless.tick({"source": "aws.events"}, None)
    again = serverless.tick({"source": "aws.events"}, None)

    assert health["statusCode"] == 200
    assert hooked["statusCode"] == 200
    assert counts["completed"] == 1
    assert counts["delivered"] == 2
    assert again["delivered"] == 0
    events = {json.loads(body)["job"]["id"]: json.loads(body) for _, body in world.inbox.posts}
    assert events[apiframe_job["id"]]["job"]["completed_via"] == "webhook"
    assert events[runbase_job["id"]]["job"]["completed_via"] == "poll"
    assert len(world.inbox.posts) == 2
    assert Path(world.env["RECEIVER_DATABASE_URL"].removeprefix("sqlite:///")).exists()


def _runbase_status(world: World, run_id: str) -> str:
    answer = httpx.get(
        f"{world.env['RUNBASE_BASE_URL']}/api/v1/runs/{run_id}",
        headers={"Authorization": f"Bearer {RUNBASE_KEY}"},
    )
    status: str = answer.json()["status"]
    return status
