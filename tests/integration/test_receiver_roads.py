"""Both roads to a completion, over real HTTP: Apiframe by webhook, Runbase by polling."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from receiver.completion import MIN_SAMPLES, Lognormal
from receiver.events import iso, parse_iso
from receiver.planner import next_look_at, polling_plan, webhook_plan
from tests.support.stack import receiver_stack, verify_forward


def test_apiframe_completion_arrives_by_webhook_and_is_forwarded_once(
    tmp_path: Path, sink, wait, store_url: str
) -> None:
    with receiver_stack(tmp_path, sink.url, database_url=store_url, expected_seconds=60) as stack:
        job = stack.submit("apiframe", mode="standard", metadata={"team": "ads"})
        assert job["status"] == "submitted"
        assert job["provider_job_id"]
        stack.clock.advance(0.3)  # the emulator's job is done and its webhook goes out
        posts = sink.wait_for(1)
        done = wait(lambda: stack.settled(job["id"]))
        now = stack.clock()

    event = verify_forward(posts[0].headers, posts[0].body)
    assert event["type"] == "job.succeeded"
    assert event["job"]["id"] == job["id"]
    assert event["job"]["metadata"] == {"team": "ads"}
    assert event["job"]["completed_via"] == "webhook"
    assert posts[0].headers["webhook-id"] == event["id"]
    assert done["completed_via"] == "webhook"
    assert done["completed_at"] == event["created_at"] == iso(now)
    assert posts[0].headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert done["output_urls"][0].endswith(".mp4")
    assert done["deliveries"] == [
        {"handler": "forward", "status": "delivered", "attempts": 1, "last_error": None}
    ]
    assert len(sink.posts) == 1


def test_runbase_completion_arrives_by_polling_and_is_forwarded_once(
    tmp_path: Path, sink, wait, store_url: str
) -> None:
    with receiver_stack(tmp_path, sink.url, database_url=store_url) as stack:
        start = stack.clock.start
        model = Lognormal.prior(0.3)  # RECEIVER_EXPECTED_SECONDS: no job has finished yet
        first = next_look_at(polling_plan, model, start, start)  # still running (the emulator takes 0.3 s)
        # The plan's next look comes sooner than the budget's pace allows: the pace decides.
        settings = stack.receiver.settings
        second = first + timedelta(seconds=settings.runbase_rate_window / settings.runbase_rate_limit)
        assert next_look_at(polling_plan, model, start, first) < second
        job = stack.submit("runbase", aspect_ratio="9:16", duration=5)
        # The submit woke the worker, which now sleeps until the first planned poll, not a fixed second.
        assert stack.clock.wait_for_sleepers(1) == [pytest.approx((first - start).total_seconds())]
        posts = stack.run_until(lambda: sink.posts)
        done = wait(lambda: stack.settled(job["id"]))
        submits = [r for r in stack.runbase.requests if r["method"] == "POST"]
        reads = [r["t"] for r in stack.runbase.requests if r["method"] == "GET"]

    event = verify_forward(posts[0].headers, posts[0].body)
    assert event["job"]["completed_via"] == "poll"
    assert event["job"]["request"]["aspect_ratio"] == "9:16"
    assert done["status"] == "succeeded"
    assert done["output_urls"]
    assert done["completed_at"] == iso(second)
    assert reads == pytest.approx([(first - start).total_seconds(), (second - start).total_seconds()])
    assert len(sink.posts) == 1
    assert len(submits) == 1


def test_webhook_before_the_submit_answer_is_recorded(tmp_path: Path, sink, wait) -> None:
    with receiver_stack(tmp_path, sink.url, apiframe={"webhook": "early", "delay": 0}) as stack:
        job = stack.submit("apiframe")
        posts = sink.wait_for(1)
        done = wait(lambda: stack.settled(job["id"]))

    assert done["status"] == "succeeded"
    assert done["completed_via"] == "webhook"
    assert done["provider_job_id"] == job["provider_job_id"]
    assert json.loads(posts[0].body)["job"]["id"] == job["id"]
    assert len(sink.posts) == 1


def test_duplicate_webhooks_from_the_provider_deliver_once(tmp_path: Path, sink, wait) -> None:
    with receiver_stack(tmp_path, sink.url, apiframe={"webhook": "duplicate"}, expected_seconds=60) as stack:
        job = stack.submit("apiframe")
        stack.clock.advance(0.3)
        wait(lambda: sum(1 for w in stack.apiframe.webhooks_sent if w.get("event") == "completed") >= 2)
        done = wait(lambda: stack.settled(job["id"]))

    assert done["deliveries"][0]["attempts"] == 1
    assert len(sink.posts) == 1


def test_a_provider_failure_reaches_the_handlers_as_job_failed(tmp_path: Path, sink, wait) -> None:
    with receiver_stack(tmp_path, sink.url, apiframe={"failure_rate": 1.0}, expected_seconds=60) as stack:
        job = stack.submit("apiframe")
        stack.clock.advance(0.3)
        posts = sink.wait_for(1)
        done = wait(lambda: stack.job(job["id"])["status"] == "failed" and stack.job(job["id"]))

    event = verify_forward(posts[0].headers, posts[0].body)
    assert event["type"] == "job.failed"
    assert done["error"]["message"]


def test_a_job_with_no_final_status_times_out_and_handlers_hear_of_it(tmp_path: Path, sink, wait) -> None:
    with receiver_stack(
        tmp_path, sink.url, apiframe={"webhook": "drop", "delay": 600}, job_timeout=0.5, expected_seconds=600
    ) as stack:
        job = stack.submit("apiframe")
        posts = stack.run_until(lambda: sink.posts, sleepers=2)  # the worker, the emulator's job
        done = stack.job(job["id"])

    event = verify_forward(posts[0].headers, posts[0].body)
    assert event["type"] == "job.failed"
    assert done["completed_at"] == iso(stack.clock.start + timedelta(seconds=0.5))  # the deadline
    assert done["status"] == "failed"
    assert done["error"]["code"] == "timeout"
    assert done["completed_via"] is None


def test_refused_submit_answers_the_provider_status_and_ends_the_job_failed(tmp_path: Path, sink) -> None:
    with receiver_stack(tmp_path, sink.url, apiframe={"credits": 5, "credit_cost": 10}) as stack:
        answer = stack.admin.post("/jobs", json={"provider": "apiframe", "prompt": "x"})
        jobs = stack.admin.get("/jobs").json()["jobs"]
        sink.wait_for(1)

    assert answer.status_code == 402
    assert "required 10" in answer.json()["error"]
    assert "available 5" in answer.json()["error"]
    assert jobs[0]["status"] == "failed"
    assert json.loads(sink.posts[0].body)["type"] == "job.failed"


def test_unusable_webhook_is_confirmed_by_a_status_read(tmp_path: Path, sink, wait) -> None:
    with receiver_stack(tmp_path, sink.url, apiframe={"webhook": "drop"}, expected_seconds=600) as stack:
        job = stack.submit("apiframe")
        stack.clock.advance(0.3)
        provider = httpx.get(f"{stack.apiframe_url}/v2/jobs/{job['provider_job_id']}",
                             headers={"X-API-Key": "afk_test_key_123"}).json()  # fmt: skip
        body = json.dumps({"event": "completed", "jobId": job["provider_job_id"], "status": "COMPLETED"})
        answer = httpx.post(stack.hook_url(job["id"]), content=body)
        stack.run_until(lambda: sink.posts)
        done = stack.job(job["id"])

    assert provider["status"] == "COMPLETED"
    assert answer.status_code == 200
    assert answer.json()["confirm"] == "poll"
    assert done["status"] == "succeeded"
    assert done["completed_via"] == "poll"
    assert done["output_urls"]


def test_reconciliation_learns_when_videos_were_done_not_when_it_found_them(tmp_path: Path, sink) -> None:
    """Apiframe's webhooks are lost and every job is ended by its reconciliation poll, well after the
    video was done. The model learns the provider's completedAt, so the next reconciliation comes
    sooner as the model firms up; learning the moment of the poll instead would put each one later
    than the last, without end."""
    late: list[float] = []
    with receiver_stack(
        tmp_path, sink.url, apiframe={"webhook": "drop", "delay": 60}, expected_seconds=60
    ) as stack:
        for n in range(MIN_SAMPLES + 1):
            job = stack.submit("apiframe")
            stack.run_until(lambda job=job: stack.settled(job["id"]), limit=500)
            done = stack.job(job["id"])
            assert done["completed_via"] == "poll"
            video_done = parse_iso(done["submitted_at"]) + timedelta(seconds=60)
            late.append((parse_iso(done["completed_at"]) - video_done).total_seconds())
            assert len(sink.posts) == n + 1

    assert late[0] == pytest.approx(webhook_plan(Lognormal.prior(60), 0.0) - 60, abs=1.0)
    assert late[:MIN_SAMPLES] == pytest.approx([late[0]] * MIN_SAMPLES, abs=1.0)  # the prior, until learned
    assert late[-1] < late[0] - 5  # learned: 60 s, and firmer than the prior
