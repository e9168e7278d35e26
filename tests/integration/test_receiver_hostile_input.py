"""Authenticated but hostile input gets a 4xx naming the problem, never a 5xx, and changes nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.stack import apiframe_body, receiver_stack

QUIET = {"apiframe": {"webhook": "drop", "delay": 600}, "expected_seconds": 600}


def nested(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = [value]
    return value


def test_deeply_nested_json_is_400_on_the_webhook_and_on_post_jobs(tmp_path: Path, sink) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    with receiver_stack(tmp_path, sink.url, **QUIET) as stack:
        job = stack.submit("apiframe")
        url = stack.hook_url(job["id"])
        hook_brackets = httpx.post(url, content=deep)
        hook_deep_field = httpx.post(
            url, content=json.dumps({"jobId": job["provider_job_id"], "result": nested(500)}).encode()
        )
        post_brackets = stack.admin.post("/jobs", content=deep)
        post_deep_metadata = stack.admin.post(
            "/jobs", json={"provider": "runbase", "prompt": "x", "metadata": {"a": nested(900)}}
        )
        after = stack.job(job["id"])
        listed = stack.admin.get("/jobs").json()["jobs"]

    for answer in (hook_brackets, hook_deep_field, post_brackets, post_deep_metadata):
        assert answer.status_code == 400, answer.text
        assert "nested more than 32 levels deep" in answer.json()["error"]
    assert after["status"] == "submitted"
    assert [j["id"] for j in listed] == [job["id"]]


def test_strings_a_store_cannot_hold_are_400(tmp_path: Path, sink) -> None:
    with receiver_stack(tmp_path, sink.url, **QUIET) as stack:
        job = stack.submit("apiframe")
        url = stack.hook_url(job["id"])
        failed = json.loads(apiframe_body(job["provider_job_id"], event="failed"))
        answers = {
            "hook surrogate": httpx.post(url, content=json.dumps({**failed, "error": "\ud800"}).encode()),
            "hook nul": httpx.post(url, content=json.dumps({**failed, "error": "a\x00b"}).encode()),
            "jobs surrogate": stack.admin.post(
                "/jobs", content=b'{"provider": "runbase", "prompt": "\\udfff"}'
            ),
            "jobs nul": stack.admin.post("/jobs", content=b'{"provider": "runbase", "prompt": "a\\u0000"}'),
        }
        after = stack.job(job["id"])

    assert {name: a.status_code for name, a in answers.items()} == dict.fromkeys(answers, 400)
    for answer in answers.values():
        assert "NUL character or an unpaired surrogate" in answer.json()["error"]
    assert after["status"] == "submitted"


def test_numbers_json_cannot_carry_are_400(tmp_path: Path, sink) -> None:
    with receiver_stack(tmp_path, sink.url, **QUIET) as stack:
        answers = [
            stack.admin.post(
                "/jobs", content=b'{"provider": "runbase", "prompt": "x", "metadata": {"n": ' + n + b"}}"
            )
            for n in (b"NaN", b"Infinity", b"-Infinity", b"1e400")
        ]
        listed = stack.admin.get("/jobs").json()["jobs"]
    assert [a.status_code for a in answers] == [400] * 4
    assert {a.json()["error"] for a in answers} == {"body is not JSON"}
    assert listed == []


def test_a_webhook_with_more_than_20_output_urls_is_400_naming_the_field(tmp_path: Path, sink) -> None:
    with receiver_stack(tmp_path, sink.url, **QUIET) as stack:
        job = stack.submit("apiframe")
        videos = [f"https://cdn.example.com/{n}.mp4" for n in range(21)]
        many = httpx.post(
            stack.hook_url(job["id"]),
            content=apiframe_body(job["provider_job_id"], result={"videos": videos}),
        )
        after = stack.job(job["id"])

    assert many.status_code == 400
    assert many.json()["error"] == "result.videos: 21 output URLs, more than 20"
    assert after["status"] == "submitted"


@pytest.mark.parametrize("limit", ["²", "٣", "1e2", " 5", "+5", "0x10", "", "-1", "0", "1001"])
def test_a_limit_that_is_not_a_plain_number_in_range_is_400(limit: str, tmp_path: Path, sink) -> None:
    with receiver_stack(tmp_path, sink.url, **QUIET) as stack:
        answer = stack.admin.get("/jobs", params={"limit": limit})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "limit: a whole number from 1 to 1000"


def test_post_jobs_refuses_a_body_over_1_mib(tmp_path: Path, sink) -> None:
    with receiver_stack(tmp_path, sink.url, **QUIET) as stack:
        big = stack.admin.post(
            "/jobs", content=b'{"provider": "runbase", "prompt": "' + b"x" * (1 << 20) + b'"}'
        )
        listed = stack.admin.get("/jobs").json()["jobs"]
    assert big.status_code == 413
    assert listed == []
