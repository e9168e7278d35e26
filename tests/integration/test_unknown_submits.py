"""A job's fate is never worse than the provider's truth: a submit whose answer was lost makes the job
`unknown` (Apiframe: sent again with the same Idempotency-Key) or `submit_unknown` (Runbase, never sent
twice); a provider's final report after the receiver gave up on a job is recorded; a write that fails
after the provider accepted is retried. Real HTTP on loopback to the emulators, on both stores."""

from __future__ import annotations

import json
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.providers.apiframe import ApiframeClient, idempotency_key
from receiver.providers.runbase import RunbaseClient
from receiver.store import StoreUnavailable
from tests.support.inbox import Inbox
from tests.support.stack import APIFRAME_KEY, RUNBASE_KEY, Stack, receiver_stack, verify_forward
from tests.support.waiting import wait_until


class LoseFirstAnswer(httpx.AsyncBaseTransport):
    """Sends every request for real; the first POST's answer is lost on the way back: unreadable (a
    proxy's HTML page with status 200), never read (the read timed out), or readable but for a new
    status value."""

    def __init__(self, how: str) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.how = how
        self.lost = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method != "POST" or self.lost:
            return response
        self.lost += 1
        if self.how == "new status":  # readable, and it names the job, with a status no client knows
            await response.aread()
            data = {**json.loads(response.content), "status": "enqueued-v2"}
            return httpx.Response(response.status_code, json=data, request=request)
        await response.aclose()
        if self.how == "timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        return httpx.Response(200, content=b"<html>upstream busy</html>", request=request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def lose_first_answer(stack: Stack, provider: str, how: str) -> None:
    """The receiver's client for `provider` goes through LoseFirstAnswer."""
    receiver = stack.receiver
    if provider == "apiframe":
        client: Any = ApiframeClient(
            APIFRAME_KEY, stack.apiframe_url, transport=LoseFirstAnswer(how), clock=stack.clock
        )
    else:
        client = RunbaseClient(
            RUNBASE_KEY,
            stack.runbase_url,
            transport=LoseFirstAnswer(how),
            budget=receiver.budget,
            clock=stack.clock,
        )
    receiver._clients[provider] = client


def post_job(stack: Stack, body: dict[str, Any]) -> httpx.Response:
    """POST /jobs while moving the clock to each wake-up: the submit's retries wait on the clock."""
    with ThreadPoolExecutor(1) as pool:
        answer: Future[httpx.Response] = pool.submit(stack.admin.post, "/jobs", json=body)
        while not answer.done():
            wait_until(lambda: answer.done() or len(stack.clock.sleepers) >= 2)  # the worker, the retry
            if not answer.done():
                stack.clock.advance_to(stack.clock.sleepers[0])
        return answer.result()


def events(sink: Inbox) -> list[dict[str, Any]]:
    return [verify_forward(post.headers, post.body) for post in sink.posts]


@pytest.mark.parametrize("webhook", ["deliver", "drop"])
def test_an_unreadable_answer_to_an_apiframe_submit_makes_the_job_unknown_until_apiframe_says(
    tmp_path: Path, sink: Inbox, store_url: str, webhook: str
) -> None:
    """Found by the job's own webhook, or (no webhook) by the submit sent again with the same key."""
    with receiver_stack(tmp_path, sink.url, database_url=store_url, apiframe={"webhook": webhook}) as stack:
        lose_first_answer(stack, "apiframe", "garbled")
        job = stack.submit("apiframe")
        assert (job["status"], job["provider_job_id"], job["error"]) == ("unknown", None, None)
        done = stack.run_until(lambda: stack.settled(job["id"]))
        posts = [r for r in stack.apiframe.requests if r["method"] == "POST"]

    (made,) = stack.apiframe.jobs.values()
    assert done["status"] == "succeeded"
    assert done["provider_job_id"] == made.id
    assert {r["idempotency_key"] for r in posts} == {idempotency_key(job["id"])}
    assert len(posts) == (2 if webhook == "drop" else len(posts))
    assert [(e["type"], e["job"]["id"]) for e in events(sink)] == [("job.succeeded", job["id"])]


@pytest.mark.parametrize("how", ["garbled", "timeout"])
def test_a_runbase_submit_whose_answer_was_lost_ends_submit_unknown_and_is_never_sent_again(
    tmp_path: Path, sink: Inbox, store_url: str, how: str
) -> None:
    with receiver_stack(tmp_path, sink.url, database_url=store_url, submit_lease=5.0) as stack:
        lose_first_answer(stack, "runbase", how)
        answer = stack.admin.post("/jobs", json={"provider": "runbase", "prompt": "a red fox in snow"})
        (job,) = stack.admin.get("/jobs").json()["jobs"]
        done = stack.run_until(lambda: stack.settled(job["id"]))
        stack.advance(30)  # past the submit's lease: nothing takes the job for an orphan
        stack.run_until(lambda: stack.clock.monotonic() >= 30)
        posts = [r for r in stack.runbase.requests if r["method"] == "POST"]

    assert answer.status_code == 502
    assert done["status"] == "failed"
    assert done["error"]["code"] == "submit_unknown"
    assert len(posts) == 1
    assert len(stack.runbase.runs) == 1
    assert [e["type"] for e in events(sink)] == ["job.failed"]


@pytest.mark.parametrize("provider", ["runbase", "apiframe"])
def test_a_submit_answer_that_names_the_job_with_a_status_no_client_knows_keeps_the_job(
    tmp_path: Path, sink: Inbox, store_url: str, provider: str
) -> None:
    """Unreadable but for the id: the job exists under that id, so it is `submitted` and followed."""
    with receiver_stack(tmp_path, sink.url, database_url=store_url) as stack:
        lose_first_answer(stack, provider, "new status")
        job = stack.submit(provider)
        done = stack.run_until(lambda: stack.settled(job["id"]))
        made = list(stack.runbase.runs if provider == "runbase" else stack.apiframe.jobs)

    assert job["status"] == "submitted"
    assert made == [job["provider_job_id"]]
    assert done["status"] == "succeeded"
    assert [e["type"] for e in events(sink)] == ["job.succeeded"]


def test_a_final_webhook_after_the_receiver_gave_up_on_the_job_is_recorded_and_delivered(
    tmp_path: Path, sink: Inbox, store_url: str
) -> None:
    """The job times out at 10 s (handlers hear `failed`, `timeout`); Apiframe completes it at 20 s and
    says so: the job is `succeeded` after all, and the handlers hear that too, as a new event."""
    options: dict[str, Any] = {"database_url": store_url, "job_timeout": 10.0}
    with receiver_stack(tmp_path, sink.url, apiframe={"delay": 20.0}, **options) as stack:
        job = stack.submit("apiframe")
        failed = stack.run_until(lambda: stack.settled(job["id"]), sleepers=2)
        done = stack.run_until(lambda: (j := stack.settled(job["id"])) and j["status"] == "succeeded" and j)

    assert (failed["status"], failed["error"]["code"]) == ("failed", "timeout")
    assert done["status"] == "succeeded"
    assert done["completed_via"] == "webhook"
    assert done["error"] is None
    assert done["output_urls"]
    first, second = events(sink)
    assert (first["type"], second["type"]) == ("job.failed", "job.succeeded")
    assert first["id"] != second["id"]
    assert second["job"]["output_urls"] == done["output_urls"]


def test_a_store_write_failing_after_the_provider_accepted_is_retried_and_the_run_kept(
    tmp_path: Path, sink: Inbox, store_url: str
) -> None:
    """Runbase has no idempotency key: a job left without its run id could only be given up on, and a
    client retrying a failed POST /jobs would buy a second run."""
    with receiver_stack(tmp_path, sink.url, database_url=store_url) as stack:
        store = stack.receiver.store
        real = store.mark_submitted
        failed: list[str] = []

        async def flaky(job_id: str, *args: Any, **kwargs: Any) -> None:
            if len(failed) < 2:
                failed.append(job_id)
                raise StoreUnavailable("PostgreSQL is unavailable (OperationalError)")
            await real(job_id, *args, **kwargs)

        store.mark_submitted = flaky  # type: ignore[method-assign]
        response = post_job(stack, {"provider": "runbase", "prompt": "a red fox in snow"})
        assert response.status_code == 202, response.text
        job = response.json()
        done = stack.run_until(lambda: stack.settled(job["id"]))

    assert len(failed) == 2
    assert job["status"] == "submitted"
    assert list(stack.runbase.runs) == [job["provider_job_id"]]
    assert done["status"] == "succeeded"
    assert [e["type"] for e in events(sink)] == ["job.succeeded"]


class FirstSuccessWithoutOutput(httpx.AsyncBaseTransport):
    """Reads for real; the first status answer that says `succeeded` comes without its output URLs, as a
    provider's status read can before the file is in place."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.stripped = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method != "GET" or self.stripped:
            return response
        await response.aread()
        data = json.loads(response.content)
        if data.get("status") != "succeeded":
            return response
        self.stripped += 1
        data.pop("output", None)
        return httpx.Response(response.status_code, json=data, request=request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_a_poll_reading_succeeded_without_an_output_url_is_confirmed_by_the_next_read(
    tmp_path: Path, sink: Inbox, store_url: str
) -> None:
    with receiver_stack(tmp_path, sink.url, database_url=store_url) as stack:
        transport = FirstSuccessWithoutOutput()
        stack.receiver._clients["runbase"] = RunbaseClient(
            RUNBASE_KEY,
            stack.runbase_url,
            transport=transport,
            budget=stack.receiver.budget,
            clock=stack.clock,
        )
        job = stack.submit("runbase")
        done = stack.run_until(lambda: stack.settled(job["id"]))
        reads = [r for r in stack.runbase.requests if r["method"] == "GET"]

    (run,) = stack.runbase.runs.values()
    assert transport.stripped == 1
    assert done["status"] == "succeeded"
    assert done["output_urls"] == [run.file_url]
    assert len(reads) >= 2
    (event,) = events(sink)
    assert event["job"]["output_urls"] == [run.file_url]
