"""The whole receiver on PostgreSQL, over real HTTP: both roads deliver once, and racing webhooks and a
poll still give one delivery."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from pg_server import fresh_schema
from receiver_stack import Stack, apiframe_body, apiframe_signature, receiver_stack, verify_forward

from receiver.store.postgres import PostgresStore

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL schema for the test's receiver store."""
    with fresh_schema() as url:
        yield url


def _stored_jobs(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT id, status FROM receiver_jobs ORDER BY seq").fetchall()


def _on_postgres(stack: Stack) -> None:
    assert isinstance(stack.receiver.store, PostgresStore)


def test_apiframe_completion_arrives_by_webhook_and_is_forwarded_once(
    tmp_path: Path, sink, wait, pg_url: str
) -> None:
    with receiver_stack(tmp_path, sink.url, database_url=pg_url, expected_seconds=60) as stack:
        _on_postgres(stack)
        job = stack.submit("apiframe", mode="standard", metadata={"team": "ads"})
        assert job["status"] == "submitted"
        assert job["provider_job_id"]
        posts = sink.wait_for(1)
        done = wait(lambda: stack.settled(job["id"]))

    event = verify_forward(posts[0].headers, posts[0].body)
    assert event["type"] == "job.succeeded"
    assert event["job"]["id"] == job["id"]
    assert event["job"]["metadata"] == {"team": "ads"}
    assert event["job"]["completed_via"] == "webhook"
    assert posts[0].headers["webhook-id"] == event["id"]
    assert done["completed_via"] == "webhook"
    assert done["output_urls"][0].endswith(".mp4")
    assert done["deliveries"] == [
        {"handler": "forward", "status": "delivered", "attempts": 1, "last_error": None}
    ]
    assert len(sink.posts) == 1
    assert _stored_jobs(pg_url) == [(job["id"], "succeeded")]


def test_runbase_completion_arrives_by_polling_and_is_forwarded_once(
    tmp_path: Path, sink, wait, pg_url: str
) -> None:
    with receiver_stack(tmp_path, sink.url, database_url=pg_url) as stack:
        _on_postgres(stack)
        job = stack.submit("runbase", aspect_ratio="9:16", duration=5)
        posts = sink.wait_for(1, timeout=15)
        done = wait(lambda: stack.settled(job["id"]))
        submits = [r for r in stack.runbase.requests if r["method"] == "POST"]

    event = verify_forward(posts[0].headers, posts[0].body)
    assert event["job"]["completed_via"] == "poll"
    assert event["job"]["request"]["aspect_ratio"] == "9:16"
    assert done["status"] == "succeeded"
    assert done["output_urls"]
    assert len(sink.posts) == 1
    assert len(submits) == 1
    assert _stored_jobs(pg_url) == [(job["id"], "succeeded")]


def test_ten_concurrent_webhooks_and_a_racing_poll_give_one_delivery(
    tmp_path: Path, sink, pg_url: str
) -> None:
    settings = {"apiframe": {"webhook": "drop", "delay": 0}, "expected_seconds": 0.01}
    with receiver_stack(tmp_path, sink.url, database_url=pg_url, run_worker=False, **settings) as stack:
        _on_postgres(stack)
        job = stack.submit("apiframe")
        body = apiframe_body(job["provider_job_id"])
        headers = {"X-Webhook-Signature": apiframe_signature(body)}
        url = stack.hook_url(job["id"])
        start = threading.Barrier(11)
        answers: list[int] = []

        def send() -> None:
            start.wait()
            answers.append(httpx.post(url, content=body, headers=headers).status_code)

        def tick() -> None:
            start.wait()
            answers.append(stack.admin.post("/tick").status_code)

        threads = [threading.Thread(target=send) for _ in range(10)] + [threading.Thread(target=tick)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stack.admin.post("/tick")
        done = stack.job(job["id"])

    assert answers == [200] * 11
    assert done["status"] == "succeeded"
    assert done["deliveries"] == [
        {"handler": "forward", "status": "delivered", "attempts": 1, "last_error": None}
    ]
    assert len(sink.posts) == 1
    assert _stored_jobs(pg_url) == [(job["id"], "succeeded")]
