"""Failover against the emulators over real HTTP: a job for "auto" or a list of providers goes to the
next one when the first refuses for a reason the other may not share, and only when the first
certainly made nothing. One job id throughout; its JSON lists each attempt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_unknown_submits import events, lose_first_answer, post_job
from tests.support.inbox import Inbox
from tests.support.stack import Stack, receiver_stack

RUNBASE_FIRST = ("runbase", "apiframe")


def posts(stack: Stack, provider: str) -> list[dict[str, Any]]:
    emulator = stack.apiframe if provider == "apiframe" else stack.runbase
    return [r for r in emulator.requests if r["method"] == "POST"]


def outcomes(job: dict[str, Any]) -> list[tuple[str, str]]:
    return [(a["provider"], a["outcome"]) for a in job["attempts"]]


@pytest.mark.parametrize("choice", ["auto", ["apiframe", "runbase"]])
def test_apiframe_out_of_credits_sends_the_job_to_runbase_where_it_completes_and_is_delivered_once(
    tmp_path: Path, sink: Inbox, store_url: str, choice: Any
) -> None:
    with receiver_stack(tmp_path, sink.url, database_url=store_url, apiframe={"credits": 0}) as stack:
        job = stack.submit(choice)
        done = stack.run_until(lambda: stack.settled(job["id"]))

    assert (job["provider"], job["status"]) == ("runbase", "submitted")
    assert done["status"] == "succeeded"
    assert list(stack.runbase.runs) == [done["provider_job_id"]]
    assert stack.apiframe.jobs == {}
    assert [r["status"] for r in posts(stack, "apiframe")] == [402]
    assert outcomes(done) == [("apiframe", "refused"), ("runbase", "accepted")]
    refused, accepted = done["attempts"]
    assert "402" in refused["answer"]
    assert "Insufficient credits" in refused["answer"]
    assert accepted["answer"] == done["provider_job_id"]
    assert refused["at"] <= accepted["at"]
    (event,) = events(sink)
    assert event["type"] == "job.succeeded"
    assert event["job"]["id"] == job["id"]
    assert event["job"]["attempts"] == done["attempts"]
    assert done["deliveries"][0]["attempts"] == 1


def test_an_apiframe_outage_where_nothing_was_made_sends_the_job_to_runbase(
    tmp_path: Path, sink: Inbox, store_url: str
) -> None:
    with receiver_stack(tmp_path, sink.url, database_url=store_url) as stack:
        stack.apiframe.inject(503, seconds=600)
        answer = post_job(stack, {"provider": "auto", "prompt": "a red fox in snow"})
        assert answer.status_code == 202, answer.text
        job = answer.json()
        done = stack.run_until(lambda: stack.settled(job["id"]))

    assert done["status"] == "succeeded"
    assert outcomes(done) == [("apiframe", "refused"), ("runbase", "accepted")]
    assert {r["status"] for r in posts(stack, "apiframe")} == {503}
    assert stack.apiframe.jobs == {}
    assert len(events(sink)) == 1


def test_runbase_throttled_beyond_the_bound_sends_the_job_to_apiframe(
    tmp_path: Path, sink: Inbox, store_url: str
) -> None:
    """429s and the key's budget hold the job back; once the next try would come later than
    RECEIVER_FAILOVER_WAIT (20 s) after the job was made, it goes to Apiframe instead."""
    options: dict[str, Any] = {"provider_order": RUNBASE_FIRST, "failover_wait": 20.0}
    with receiver_stack(tmp_path, sink.url, database_url=store_url, **options) as stack:
        stack.runbase.inject(429, seconds=600)
        job = stack.submit("auto")
        assert (job["provider"], job["status"]) == ("runbase", "queued")
        done = stack.run_until(lambda: stack.settled(job["id"]), limit=200)
        moved = next(a for a in done["attempts"] if a["outcome"] == "throttled")

    assert done["status"] == "succeeded"
    assert done["provider"] == "apiframe"
    assert outcomes(done) == [("runbase", "throttled"), ("apiframe", "accepted")]
    assert stack.runbase.runs == {}
    assert {r["status"] for r in posts(stack, "runbase")} == {429}
    (made,) = stack.apiframe.jobs.values()
    assert done["provider_job_id"] == made.id
    assert made.input["webhookUrl"].startswith(f"{stack.url}/hooks/apiframe/")
    assert len(events(sink)) == 1
    assert moved["at"] <= done["attempts"][1]["at"]


def test_a_short_throttle_within_the_bound_keeps_the_job_where_it_is(
    tmp_path: Path, sink: Inbox, store_url: str
) -> None:
    options: dict[str, Any] = {"provider_order": RUNBASE_FIRST, "failover_wait": 60.0}
    with receiver_stack(tmp_path, sink.url, database_url=store_url, **options) as stack:
        stack.runbase.inject(429)
        job = stack.submit("auto")
        done = stack.run_until(lambda: stack.settled(job["id"]))

    assert done["provider"] == "runbase"
    assert outcomes(done) == [("runbase", "accepted")]
    assert posts(stack, "apiframe") == []


@pytest.mark.parametrize(("status", "code"), [(400, 400), (401, 401)])
def test_a_refusal_every_provider_would_give_does_not_fail_over(
    tmp_path: Path, sink: Inbox, store_url: str, status: int, code: int
) -> None:
    """400: the prompt would be refused everywhere; 401: our own key is configuration."""
    with receiver_stack(tmp_path, sink.url, database_url=store_url) as stack:
        stack.apiframe.inject(status)
        answer = stack.admin.post("/jobs", json={"provider": "auto", "prompt": "a red fox in snow"})
        (job,) = stack.admin.get("/jobs").json()["jobs"]
        done = stack.run_until(lambda: stack.settled(job["id"]))

    assert answer.status_code == code
    assert done["status"] == "failed"
    assert done["provider"] == "apiframe"
    assert outcomes(done) == [("apiframe", "refused")]
    assert posts(stack, "runbase") == []
    assert [e["type"] for e in events(sink)] == ["job.failed"]


def test_a_runbase_submit_whose_answer_was_lost_does_not_fail_over(
    tmp_path: Path, sink: Inbox, store_url: str
) -> None:
    """The run may exist: sending the job to Apiframe could buy a second video."""
    options: dict[str, Any] = {"provider_order": RUNBASE_FIRST}
    with receiver_stack(tmp_path, sink.url, database_url=store_url, **options) as stack:
        lose_first_answer(stack, "runbase", "timeout")
        answer = stack.admin.post("/jobs", json={"provider": "auto", "prompt": "a red fox in snow"})
        (job,) = stack.admin.get("/jobs").json()["jobs"]
        done = stack.run_until(lambda: stack.settled(job["id"]))

    assert answer.status_code == 502
    assert (done["status"], done["error"]["code"]) == ("failed", "submit_unknown")
    assert outcomes(done) == [("runbase", "unknown")]
    assert posts(stack, "apiframe") == []
    assert len(stack.runbase.runs) == 1


def test_an_apiframe_submit_whose_answer_was_lost_is_resolved_at_apiframe_not_failed_over(
    tmp_path: Path, sink: Inbox, store_url: str
) -> None:
    with receiver_stack(tmp_path, sink.url, database_url=store_url) as stack:
        lose_first_answer(stack, "apiframe", "garbled")
        job = stack.submit("auto")
        assert (job["provider"], job["status"]) == ("apiframe", "unknown")
        done = stack.run_until(lambda: stack.settled(job["id"]))

    (made,) = stack.apiframe.jobs.values()
    assert (done["status"], done["provider_job_id"]) == ("succeeded", made.id)
    assert outcomes(done)[0] == ("apiframe", "unknown")
    assert posts(stack, "runbase") == []
    assert len(events(sink)) == 1


def test_a_parameter_only_the_other_provider_takes_sends_the_job_there_unsent(
    tmp_path: Path, sink: Inbox
) -> None:
    """Apiframe documents no aspect_ratio: with "auto", the job goes to Runbase without a request to
    Apiframe; a job for Apiframe alone is refused before anything is recorded."""
    with receiver_stack(tmp_path, sink.url) as stack:
        job = stack.submit("auto", aspect_ratio="9:16")
        done = stack.run_until(lambda: stack.settled(job["id"]))
        alone = stack.admin.post(
            "/jobs", json={"provider": "apiframe", "prompt": "a red fox", "aspect_ratio": "9:16"}
        )
        jobs = stack.admin.get("/jobs").json()["jobs"]

    assert done["provider"] == "runbase"
    assert outcomes(done) == [("apiframe", "not_sent"), ("runbase", "accepted")]
    assert "aspect_ratio" in done["attempts"][0]["answer"]
    assert stack.apiframe.requests == []
    assert alone.status_code == 422
    assert [j["id"] for j in jobs] == [job["id"]]


def test_an_unknown_provider_in_the_choice_is_named_in_a_422(tmp_path: Path, sink: Inbox) -> None:
    with receiver_stack(tmp_path, sink.url) as stack:
        answers = [
            stack.admin.post("/jobs", json={"provider": value, "prompt": "a red fox"})
            for value in (["runbase", "midjourney"], "nope", [], 7)
        ]

    assert [a.status_code for a in answers] == [422] * 4
    assert all("provider" in a.json()["errors"] for a in answers)
    assert "midjourney" in answers[0].json()["errors"]["provider"]
