"""Submits that cannot go now, or whose answer was lost: queued and sent by the worker, resubmitted with
the same Idempotency-Key, or ended `submit_unknown`. Real HTTP on loopback, on both stores."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.generation import KlingRequest
from receiver.providers.apiframe import ApiframeClient, idempotency_key
from receiver.providers.base import ProviderClient
from receiver.providers.runbase import RunbaseClient
from receiver.service import Receiver
from receiver.store import open_store
from receiver.worker import CONCURRENCY, LEASE, MAX_IDLE
from tests.support.inbox import Inbox
from tests.support.stack import APIFRAME_KEY, RUNBASE_KEY, Stack, receiver_stack, verify_forward


class Crash(BaseException):
    """The process stops: nothing after this line runs, no handler catches it."""


class CrashAfterSend(httpx.AsyncBaseTransport):
    """Sends the request for real, then stops the process before the answer is read."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        await response.aclose()
        raise Crash("the process stopped before it read the submit's answer")

    async def aclose(self) -> None:
        await self.inner.aclose()


def crash_during_submit(
    stack: Stack, store_url: str, provider: str, idempotency_key: str | None = None
) -> str:
    """Another process on the same store records a job and sends its submit, then dies; the job's id."""
    client: ProviderClient
    if provider == "apiframe":
        client = ApiframeClient(APIFRAME_KEY, stack.apiframe_url, transport=CrashAfterSend())
    else:
        client = RunbaseClient(RUNBASE_KEY, stack.runbase_url, transport=CrashAfterSend())

    async def run() -> None:
        other = Receiver(
            stack.receiver.settings, open_store(store_url), [], clients={provider: client}, clock=stack.clock
        )
        await other.open()
        try:
            with pytest.raises(Crash):
                await other.submit_once(provider, KlingRequest(prompt="a red fox in snow"), idempotency_key)
        finally:
            await other.close()

    asyncio.run(run())
    (job,) = stack.admin.get("/jobs").json()["jobs"]
    assert job["status"] == "pending"
    assert job["provider_job_id"] is None
    job_id: str = job["id"]
    return job_id


def settled_all(stack: Stack, ids: list[str]) -> list[dict[str, Any]] | None:
    jobs = [stack.settled(job_id) for job_id in ids]
    return None if None in jobs else jobs  # type: ignore[return-value]


def delivered_once(sink: Inbox, jobs: list[dict[str, Any]]) -> None:
    events = [verify_forward(post.headers, post.body) for post in sink.posts]
    assert sorted(e["job"]["id"] for e in events) == sorted(job["id"] for job in jobs)
    for job in jobs:
        assert job["deliveries"] == [
            {"handler": "forward", "status": "delivered", "attempts": 1, "last_error": None}
        ]


def test_a_submit_the_budget_holds_back_is_queued_then_sent_by_the_worker_ahead_of_polls(
    tmp_path: Path, sink: Inbox, store_url: str
) -> None:
    with receiver_stack(tmp_path, sink.url, database_url=store_url, runbase_rate_limit=2) as stack:
        first = [stack.submit("runbase"), stack.submit("runbase")]
        held = stack.submit("runbase")  # both slots are taken for the next 10 s: more than the 2 s wait
        assert [job["status"] for job in first] == ["submitted", "submitted"]
        assert held["status"] == "queued"
        assert held["provider_job_id"] is None
        assert len(stack.runbase.runs) == 2
        # Past the window, the queued submit and both first polls are due in the same round.
        stack.advance(15)
        jobs = stack.run_until(lambda: settled_all(stack, [first[0]["id"], first[1]["id"], held["id"]]))
        log = [(r["method"], r["t"], r["status"]) for r in stack.runbase.requests]

    assert [job["status"] for job in jobs] == ["succeeded"] * 3
    assert jobs[2]["provider_job_id"] in stack.runbase.runs
    assert len(stack.runbase.runs) == 3
    posts = [entry for entry in log if entry[0] == "POST"]
    assert [(t, status) for _, t, status in posts] == [(0.0, 201), (0.0, 201), (15.0, 201)]
    first_read = next(i for i, entry in enumerate(log) if entry[0] == "GET")
    assert log.index(posts[2]) < first_read
    assert all(status != 429 for _, _, status in log)
    delivered_once(sink, jobs)


def test_a_submit_refused_with_429_is_queued_and_succeeds_later(
    tmp_path: Path, sink: Inbox, store_url: str
) -> None:
    with receiver_stack(tmp_path, sink.url, database_url=store_url) as stack:
        stack.runbase.inject(429)
        job = stack.submit("runbase")
        assert job["status"] == "queued"
        assert job["error"] is None
        (done,) = stack.run_until(lambda: settled_all(stack, [job["id"]]))
        posts = [r["status"] for r in stack.runbase.requests if r["method"] == "POST"]

    assert done["status"] == "succeeded"
    assert posts == [429, 201]
    assert list(stack.runbase.runs) == [done["provider_job_id"]]
    delivered_once(sink, [done])


def test_a_runbase_429_storm_fails_no_job(tmp_path: Path, sink: Inbox, store_url: str) -> None:
    # A submit waits for no budget at all here, so one held back by the storm's pause queues at once.
    with receiver_stack(tmp_path, sink.url, database_url=store_url, submit_wait=0.0) as stack:
        before = [stack.submit("runbase")["id"] for _ in range(3)]
        stack.runbase.inject(429, seconds=30)  # every request refused for 30 s of the clock
        during = [stack.submit("runbase") for _ in range(2)]
        assert [job["status"] for job in during] == ["queued", "queued"]
        jobs = stack.run_until(lambda: settled_all(stack, before + [j["id"] for j in during]), limit=400)
        refused = [r for r in stack.runbase.requests if r["status"] == 429]
        now = stack.clock.monotonic()

    assert [job["status"] for job in jobs] == ["succeeded"] * 5
    assert len(stack.runbase.runs) == 5
    assert {r["method"] for r in refused} == {"GET", "POST"}
    assert max(r["t"] for r in refused) < 30 <= now
    delivered_once(sink, jobs)


def test_a_queued_job_still_ends_at_its_deadline(tmp_path: Path, sink: Inbox, store_url: str) -> None:
    with receiver_stack(tmp_path, sink.url, database_url=store_url, job_timeout=20) as stack:
        stack.runbase.inject(429, seconds=60)
        job = stack.submit("runbase")
        assert job["status"] == "queued"
        (done,) = stack.run_until(lambda: settled_all(stack, [job["id"]]))

    assert done["status"] == "failed"
    assert done["error"]["code"] == "timeout"
    assert stack.runbase.runs == {}
    delivered_once(sink, [done])


def test_an_apiframe_job_whose_process_died_is_resubmitted_with_the_same_key_and_body(
    tmp_path: Path, sink: Inbox, store_url: str
) -> None:
    # No webhook: only the resubmit's answer can tell the receiver which Apiframe job this is.
    options: dict[str, Any] = {
        "database_url": store_url,
        "submit_lease": 5.0,
        "apiframe": {"webhook": "drop"},
    }
    with receiver_stack(tmp_path, sink.url, **options) as stack:
        job_id = crash_during_submit(stack, store_url, "apiframe")
        (done,) = stack.run_until(lambda: settled_all(stack, [job_id]))
        posts = [r for r in stack.apiframe.requests if r["method"] == "POST"]

    (made,) = stack.apiframe.jobs.values()
    assert done["status"] == "succeeded"
    assert done["provider_job_id"] == made.id
    assert [(r["status"], r["idempotency_key"]) for r in posts] == [(202, idempotency_key(job_id))] * 2
    assert posts[1]["t"] >= 5.0
    assert made.input["webhookUrl"].startswith(f"{stack.url}/hooks/apiframe/")
    delivered_once(sink, [done])


def test_a_runbase_job_whose_submit_answer_was_lost_ends_submit_unknown(
    tmp_path: Path, sink: Inbox, store_url: str
) -> None:
    with receiver_stack(tmp_path, sink.url, database_url=store_url, submit_lease=5.0) as stack:
        job_id = crash_during_submit(stack, store_url, "runbase")
        (done,) = stack.run_until(lambda: settled_all(stack, [job_id]))
        posts = [r for r in stack.runbase.requests if r["method"] == "POST"]

    assert done["status"] == "failed"
    assert done["error"]["code"] == "submit_unknown"
    assert "not sent again" in done["error"]["message"]
    assert len(posts) == 1
    assert len(stack.runbase.runs) == 1
    (event,) = [verify_forward(post.headers, post.body) for post in sink.posts]
    assert event["type"] == "job.failed"
    delivered_once(sink, [done])


def test_a_killed_workers_poll_claim_is_taken_over_within_its_lease(
    tmp_path: Path, store_url: str, sink: Inbox
) -> None:
    with receiver_stack(tmp_path, sink.url, database_url=store_url) as stack:
        job = stack.submit("runbase")
        claimed_at = stack.clock.monotonic()

        async def claim_and_die() -> list[Any]:
            other = open_store(store_url)
            await other.open()
            try:  # another worker claims the due poll a second from now, then is killed
                later = stack.clock() + timedelta(seconds=1)
                return await other.claim_due_polls(later, CONCURRENCY, LEASE)
            finally:
                await other.close()

        assert [j.id for j in asyncio.run(claim_and_die())] == [job["id"]]
        stack.run_until(lambda: stack.settled(job["id"]))
        gets = [r for r in stack.runbase.requests if r["method"] == "GET"]
        # Nobody looked at the job until the dead worker's lease ran out, and then at once.
        assert claimed_at + 1 + LEASE <= gets[0]["t"] <= claimed_at + 1 + LEASE + MAX_IDLE


def test_a_client_retrying_with_its_idempotency_key_gets_the_first_job_and_no_second_run(
    tmp_path: Path, sink: Inbox, store_url: str
) -> None:
    """The answer to a POST /jobs is lost (here: the receiver's process died after recording the job
    and sending its submit). The client sends the same request with the same Idempotency-Key: it gets
    the job the first call made, the provider runs it once, and its handlers hear of it once."""
    options: dict[str, Any] = {"database_url": store_url, "submit_lease": 5.0}
    body = {"provider": "apiframe", "prompt": "a red fox in snow"}
    key = {"Idempotency-Key": "order-7731/video-1"}
    with receiver_stack(tmp_path, sink.url, **options) as stack:
        job_id = crash_during_submit(stack, store_url, "apiframe", idempotency_key=key["Idempotency-Key"])

        again = stack.admin.post("/jobs", json=body, headers=key)
        assert again.status_code == 200, again.text  # not 202: nothing new was made or sent
        assert again.json()["id"] == job_id

        other = stack.admin.post("/jobs", json={**body, "prompt": "a blue fox"}, headers=key)
        assert other.status_code == 409
        assert "Idempotency-Key" in other.json()["error"]
        bad = stack.admin.post("/jobs", json=body, headers={"Idempotency-Key": "x" * 256})
        assert bad.status_code == 400
        assert "Idempotency-Key" in bad.json()["error"]

        (done,) = stack.run_until(lambda: settled_all(stack, [job_id]))
        assert stack.admin.post("/jobs", json=body, headers=key).json()["status"] == "succeeded"

    assert done["status"] == "succeeded"
    assert len(stack.apiframe.jobs) == 1
    delivered_once(sink, [done])


def test_two_submits_with_different_idempotency_keys_are_two_jobs(
    tmp_path: Path, sink: Inbox, store_url: str
) -> None:
    body = {"provider": "runbase", "prompt": "a red fox in snow"}
    with receiver_stack(tmp_path, sink.url, database_url=store_url) as stack:
        first = stack.admin.post("/jobs", json=body, headers={"Idempotency-Key": "a"})
        second = stack.admin.post("/jobs", json=body, headers={"Idempotency-Key": "b"})
        plain = stack.admin.post("/jobs", json=body)
    assert [a.status_code for a in (first, second, plain)] == [202, 202, 202]
    assert len({a.json()["id"] for a in (first, second, plain)}) == 3
    assert len(stack.runbase.runs) == 3
