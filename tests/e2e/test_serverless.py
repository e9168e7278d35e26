"""The AWS Lambda entry points, invoked as Lambda would: API Gateway events through Mangum, then the
scheduled tick, with the emulators and the forward target on loopback."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from conftest import ADMIN, World, wait_until

from receiver.signing import WebhookSigner
from tests.support.gateway import http_api_event, running_gateway
from tests.support.pg import fresh_schema

SECRET = "serverless-secret-value"


@contextmanager
def lambda_module(world: World, monkeypatch: pytest.MonkeyPatch, **env: str) -> Iterator[ModuleType]:
    """`receiver.serverless` imported afresh with the world's settings and `env` (Lambda's init)."""
    for name, value in {**world.env, "RECEIVER_SECRET": SECRET, **env}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(world.tmp)
    sys.modules.pop("receiver.serverless", None)
    module = importlib.import_module("receiver.serverless")
    try:
        yield module
    finally:
        module.shutdown()
        asyncio.set_event_loop(None)


@pytest.fixture
def serverless(world: World, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    with lambda_module(world, monkeypatch, RECEIVER_PUBLIC_URL="https://hooks.example.com") as module:
        yield module


@pytest.mark.parametrize("world", [{"apiframe": {"webhook": "drop"}}], indirect=True)
def test_lambda_handler_takes_webhooks_and_the_scheduled_tick_delivers(
    world: World, serverless: ModuleType
) -> None:
    admin = {"authorization": f"Bearer {ADMIN}"}
    health = serverless.handler(http_api_event("GET", "/healthz"), None)
    submitted = {}
    for provider in ("apiframe", "runbase"):
        body = json.dumps({"provider": provider, "prompt": "a fox"}).encode()
        answer = serverless.handler(http_api_event("POST", "/jobs", body, admin), None)
        assert answer["statusCode"] == 202, answer["body"]
        submitted[provider] = json.loads(answer["body"])
    apiframe_job, runbase_job = submitted["apiframe"], submitted["runbase"]
    token = WebhookSigner(SECRET).token(apiframe_job["id"], "apiframe")
    webhook = json.dumps({
        "event": "completed", "jobId": apiframe_job["provider_job_id"], "status": "COMPLETED", "progress": 100,
        "result": {"videoUrl": "https://cdn.example.com/v.mp4"}, "model": "kling-3.0",
    }).encode()  # fmt: skip
    hooked = serverless.handler(http_api_event("POST", f"/hooks/apiframe/{token}", webhook), None)
    # Read the emulator's own state: polling its API from here would spend the key's rate budget, and
    # the tick's poll could then be refused with 429.
    run = world.runbase.runs[runbase_job["provider_job_id"]]
    wait_until(lambda: (run.share() or 0.0) >= 1.0)
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


JOBS = [("apiframe" if n % 4 else "runbase", f"clip {n}") for n in range(32)]


@pytest.mark.postgres
@pytest.mark.parametrize(
    "world",
    [{"apiframe": {"delay": 0.3}, "runbase": {"delay": 0.3}, "env": {"RECEIVER_EXPECTED_SECONDS": "2"}}],
    indirect=True,
)
def test_concurrent_invocations_and_the_scheduled_tick_share_one_postgres(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """4 warm containers take submits and Apiframe's webhooks at once while a fifth runs the tick."""
    with (
        fresh_schema() as url,
        running_gateway("receiver.serverless.handler") as gateway,
        lambda_module(world, monkeypatch, RECEIVER_DATABASE_URL=url, RECEIVER_PUBLIC_URL=gateway.url) as module,
    ):  # fmt: skip
        stop = threading.Event()
        ticks: list[dict[str, int]] = []

        def schedule() -> None:  # EventBridge: a tick every 0.2 s, one at a time
            while not stop.wait(0.2):
                ticks.append(module.tick({"source": "aws.events"}, None))

        ticker = threading.Thread(target=schedule)
        ticker.start()
        try:
            with world.admin() as admin, ThreadPoolExecutor(8) as senders:
                admin.base_url = httpx.URL(gateway.url)
                answers = list(senders.map(
                    lambda job: admin.post("/jobs", json={"provider": job[0], "prompt": job[1]}), JOBS
                ))  # fmt: skip
                ids = [a.json()["id"] for a in answers]
                world.inbox.wait_for(len(JOBS), timeout=60)
                jobs = wait_until(lambda: _all_delivered(admin, ids), timeout=30)
        finally:
            stop.set()
            ticker.join()

    events = [json.loads(body) for _, body in world.inbox.posts]
    final_hooks = [w for w in world.apiframe.webhooks_sent if w["event"] == "completed"]
    assert [a.status_code for a in answers] == [202] * len(JOBS), [
        a.text for a in answers if a.status_code != 202
    ]
    assert {j["status"] for j in jobs} == {"succeeded"}
    assert sorted(e["job"]["id"] for e in events) == sorted(ids)
    assert len({e["id"] for e in events}) == len(JOBS)
    assert sum(t["delivered"] for t in ticks) == len(JOBS)  # only the tick dispatches
    assert len(final_hooks) == sum(p == "apiframe" for p, _ in JOBS)
    assert all(w.get("status_code") == 200 for w in world.apiframe.webhooks_sent)
    assert {j["completed_via"] for j in jobs if j["provider"] == "runbase"} == {"poll"}
    assert [r for r in world.runbase.requests if r["status"] == 429] == []


def _all_delivered(admin: httpx.Client, ids: list[str]) -> list[dict[str, Any]] | None:
    listed = {j["id"]: j for j in admin.get("/jobs", params={"limit": 1000}).json()["jobs"]}
    jobs = [listed[i] for i in ids]
    done = all(j["deliveries"] and j["deliveries"][0]["status"] == "delivered" for j in jobs)
    return jobs if done else None
