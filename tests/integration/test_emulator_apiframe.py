"""The Apiframe emulator over real HTTP: every route, error, status step, idempotency and webhook mode."""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.background import BackgroundServer
from receiver.clock import VirtualClock
from receiver.emulators.apiframe import ApiframeEmulator
from receiver.emulators.cli import add_arguments, run
from receiver.emulators.common import SAMPLE
from receiver.events import iso

KEY = "afk_test_key"
GOOD = {"prompt": "a cat surfing at sunset", "model": "kling-3.0"}


@pytest.fixture
def start(serve):
    """`start(**knobs)`: an emulator with the test key on a virtual clock, served, and an authenticated
    client."""

    def build(**knobs: Any) -> tuple[ApiframeEmulator, httpx.Client]:
        emulator = ApiframeEmulator(**{"api_key": KEY, "clock": VirtualClock(), **knobs})
        return emulator, serve(emulator.app, headers={"X-API-Key": KEY})

    return build


@pytest.fixture(scope="module")
def shared():
    """One emulator for the tests that leave no state behind that others could see (jobs never finish)."""
    emulator = ApiframeEmulator(api_key=KEY, delay=600, credits=1e9)
    with (
        BackgroundServer(emulator.app) as server,
        httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}) as client,
    ):
        yield emulator, client


def submit(client: httpx.Client, body: dict[str, Any] | None = None, **headers: str) -> httpx.Response:
    return client.post("/v2/videos/generate", json=GOOD if body is None else body, headers=headers)


def read_job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = client.get(f"/v2/jobs/{job_id}").json()
    return job


def next_wake(emulator: ApiframeEmulator) -> float:
    """When the emulator's one webhook task wakes next (seconds on its clock), once it sleeps."""
    [deadline] = emulator.clock.wait_for_sleepers(1)
    return deadline


def finished_webhooks(emulator: ApiframeEmulator) -> bool:
    return not emulator._tasks


def verify(post, api_key: str = KEY) -> dict[str, Any]:
    """Check a webhook post's signature the way a receiver should, and return its JSON body."""
    secret = hashlib.sha256(api_key.encode()).digest()
    expected = "sha256=" + hmac.new(secret, post.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(post.headers["x-webhook-signature"], expected)
    assert post.headers["content-type"] == "application/json"
    body = json.loads(post.body)
    assert post.headers["x-webhook-event"] == body["event"]
    return body


# -- plain routes ------------------------------------------------------------------------------------


def test_healthz_files_and_request_ids(shared):
    _, client = shared
    assert client.get("/healthz").status_code == 200
    video = client.get("/files/anything.mp4")
    assert video.status_code == 200
    assert video.headers["content-type"] == "video/mp4"
    assert video.content == SAMPLE.read_bytes()
    ids = {client.get(path).headers["x-request-id"] for path in ("/healthz", "/nowhere", "/v2/jobs/x")}
    assert len(ids) == 3


def test_missing_or_wrong_key_is_401(shared):
    _, client = shared
    for headers in ({"X-API-Key": ""}, {"X-API-Key": "afk_wrong"}):
        answer = client.post("/v2/videos/generate", json=GOOD, headers=headers)
        assert answer.status_code == 401
        assert isinstance(answer.json()["error"], str)
    assert client.get(f"/v2/jobs/{uuid.uuid4()}", headers={"X-API-Key": "afk_wrong"}).status_code == 401


def test_any_key_when_none_is_set(serve):
    client = serve(ApiframeEmulator().app, headers={"X-API-Key": "afk_whatever"})
    assert submit(client).status_code == 202
    assert client.post("/v2/videos/generate", json=GOOD, headers={"X-API-Key": ""}).status_code == 401


# -- submit validation -------------------------------------------------------------------------------

FULL = {
    **GOOD,
    "klingParams": {
        "start_image": "https://example.com/first.jpg",
        "end_image": "https://example.com/last.jpg",
        "mode": "4k",
        "generate_audio": True,
        "negative_prompt": "blur",
        "multi_prompt": "shot one; shot two",
    },
    "webhookUrl": "https://hooks.example.com/x",
    "webhookEvents": ["completed", "failed"],
}


def test_submit_accepts_every_documented_field(start):
    _, client = start(delay=30)
    answer = submit(client, FULL)
    assert answer.status_code == 202
    body = answer.json()
    assert body == {"jobId": body["jobId"], "status": "QUEUED"}
    assert uuid.UUID(body["jobId"]).version == 4
    job = client.get(f"/v2/jobs/{body['jobId']}").json()
    assert job["input"] == FULL
    assert job["webhookStatus"] == "PENDING"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"seed": 1}, "seed"),
        ({"aspect_ratio": "16:9"}, "aspect_ratio"),
        ({"webhook_url": "https://h.example.com/x"}, "webhook_url"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 4001}, "prompt"),
        ({"prompt": 7}, "prompt"),
        ({"model": "kling-2.1"}, "model"),
        ({"webhookUrl": "not a url"}, "webhookUrl"),
        ({"webhookEvents": ["done"]}, "webhookEvents"),
        ({"klingParams": []}, "klingParams"),
        ({"klingParams": {"duration": 5}}, "klingParams.duration"),
        ({"klingParams": {"mode": "std"}}, "klingParams.mode"),
        ({"klingParams": {"generate_audio": "yes"}}, "klingParams.generate_audio"),
        ({"klingParams": {"start_image": "file:///etc/passwd"}}, "klingParams.start_image"),
        ({"klingParams": {"negative_prompt": 3}}, "klingParams.negative_prompt"),
    ],
)
def test_submit_rejects_a_bad_field_by_name(shared, change, field):
    emulator, client = shared
    jobs = len(emulator.jobs)
    answer = submit(client, {**GOOD, **change})
    assert answer.status_code == 400
    body = answer.json()
    assert field in body["error"]
    assert field in [detail["field"] for detail in body["details"]]
    assert len(emulator.jobs) == jobs


def test_submit_without_model_is_400(shared):
    _, client = shared
    assert submit(client, {"prompt": "x"}).status_code == 400


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b""])
def test_submit_body_must_be_a_json_object(shared, content):
    _, client = shared
    answer = client.post("/v2/videos/generate", content=content, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400
    assert "error" in answer.json()


def test_seed_page_webhook_field_is_configurable(start):
    _, client = start(webhook_field="webhook_url")
    assert submit(client, {**GOOD, "webhook_url": "https://h.example.com/x"}).status_code == 202
    assert submit(client, {**GOOD, "webhookUrl": "https://h.example.com/x"}).status_code == 400


# -- status over time --------------------------------------------------------------------------------


def test_status_goes_queued_processing_completed(start):
    emulator, client = start(delay=1.0)
    clock = emulator.clock
    job_id = submit(client).json()["jobId"]
    seen = []
    for seconds in (0, 0.0625, 0.1875, 0.25, 0.25, 0.25):  # queued for 10% of the delay, then processing
        clock.advance(seconds)
        job = read_job(client, job_id)
        seen.append((clock.monotonic(), job["status"], job["progress"]))

    assert seen == [
        (0, "QUEUED", 0), (0.0625, "QUEUED", 0), (0.25, "PROCESSING", 16), (0.5, "PROCESSING", 44),
        (0.75, "PROCESSING", 72), (1.0, "COMPLETED", 100),
    ]  # fmt: skip
    final = read_job(client, job_id)
    assert final["createdAt"] == iso(clock.start)
    assert final["completedAt"] == iso(clock.start + timedelta(seconds=1))
    assert final["progress"] == 100
    assert final["error"] is None
    assert final["completedAt"] is not None
    assert final["expired"] is False
    assert final["creditCost"] == 10.0
    assert final["webhookStatus"] is None
    assert set(final) == {
        "id", "status", "model", "progress", "result", "error", "creditCost", "webhookStatus",
        "createdAt", "completedAt", "expired", "input",
    }  # fmt: skip
    url = final["result"]["videoUrl"]
    assert url.endswith(f"/files/{job_id}.mp4")
    video = httpx.get(url)
    assert video.headers["content-type"] == "video/mp4"


@pytest.mark.parametrize(("shape", "expected"), [("videos", {"videos": ["URL"]}), ("string", "URL")])
def test_result_shapes(start, shape, expected):
    _, client = start(delay=0, result_shape=shape)
    job_id = submit(client).json()["jobId"]
    job = read_job(client, job_id)
    assert job["status"] == "COMPLETED"
    url = job["result"] if shape == "string" else job["result"]["videos"][0]
    assert url.endswith(f"/files/{job_id}.mp4")
    assert json.loads(json.dumps(job["result"]).replace(json.dumps(url)[1:-1], "URL")) == expected


def test_job_id_must_be_a_uuid_and_known(shared):
    _, client = shared
    bad = client.get("/v2/jobs/not-a-uuid")
    assert bad.status_code == 400
    assert "error" in bad.json()
    unknown = client.get(f"/v2/jobs/{uuid.uuid4()}")
    assert unknown.status_code == 404
    assert "error" in unknown.json()


def test_failed_job_reports_an_error_and_refunds_credits(start):
    emulator, client = start(delay=0.2, failure_rate=1.0, credits=25, credit_cost=10)
    job_id = submit(client).json()["jobId"]
    assert emulator.credits == 15
    emulator.clock.advance(0.2)
    job = read_job(client, job_id)
    assert job["status"] == "FAILED"
    assert isinstance(job["error"], str)
    assert job["error"]
    assert job["result"] is None
    assert emulator.credits == 25


def test_insufficient_credits_is_402(start):
    emulator, client = start(credits=15, credit_cost=10)
    assert submit(client).status_code == 202
    answer = submit(client)
    assert answer.status_code == 402
    assert answer.json() == {"error": "Insufficient credits", "creditsRequired": 10, "creditsAvailable": 5}
    assert len(emulator.jobs) == 1


def test_output_expires(start):
    emulator, client = start(delay=0, expire_after=60)
    job_id = submit(client).json()["jobId"]
    emulator.clock.advance(60)
    fresh = read_job(client, job_id)
    emulator.clock.advance(0.001)
    job = read_job(client, job_id)
    assert fresh["expired"] is False
    assert job["expired"] is True
    assert job["status"] == "COMPLETED"
    assert client.get(f"/files/{job_id}.mp4").status_code == 404


# -- idempotency -------------------------------------------------------------------------------------


def test_same_idempotency_key_and_body_returns_the_original_job(start):
    emulator, client = start(delay=30, credits=100, credit_cost=10)
    first = submit(client, **{"Idempotency-Key": "job_1"})
    again = submit(client, **{"Idempotency-Key": "job_1"})
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert len(emulator.jobs) == 1
    assert emulator.credits == 90
    other = submit(client, **{"Idempotency-Key": "job_2"})
    assert other.json()["jobId"] != first.json()["jobId"]


def test_same_idempotency_key_with_another_body_is_409(start):
    emulator, client = start(delay=30)
    assert submit(client, **{"Idempotency-Key": "job_1"}).status_code == 202
    answer = submit(client, {**GOOD, "prompt": "a dog"}, **{"Idempotency-Key": "job_1"})
    assert answer.status_code == 409
    assert "error" in answer.json()
    assert len(emulator.jobs) == 1


def test_idempotency_key_is_at_most_255_characters(start):
    emulator, client = start(delay=30)
    assert submit(client, **{"Idempotency-Key": "k" * 255}).status_code == 202
    assert submit(client, **{"Idempotency-Key": "k" * 256}).status_code == 400
    assert len(emulator.jobs) == 1


def test_idempotency_keys_belong_to_one_api_key(serve):
    client = serve(ApiframeEmulator(delay=30).app)
    first = client.post("/v2/videos/generate", json=GOOD, headers={"X-API-Key": "a", "Idempotency-Key": "k"})
    other = client.post("/v2/videos/generate", json=GOOD, headers={"X-API-Key": "b", "Idempotency-Key": "k"})
    assert first.json()["jobId"] != other.json()["jobId"]


def test_an_idempotency_key_is_kept_for_24_hours(start):
    emulator, client = start(delay=30)
    first = submit(client, **{"Idempotency-Key": "job_1"}).json()
    emulator.clock.advance(24 * 3600 - 1)
    assert submit(client, **{"Idempotency-Key": "job_1"}).json() == first
    emulator.clock.advance(2)
    assert submit(client, **{"Idempotency-Key": "job_1"}).json()["jobId"] != first["jobId"]
    assert len(emulator.jobs) == 2


def test_a_held_submit_answer_comes_late_but_its_job_and_key_exist_at_once(start, wait):
    emulator, client = start(delay=30, submit_hold=60)
    late: list[httpx.Response] = []
    held = threading.Thread(target=lambda: late.append(submit(client, **{"Idempotency-Key": "job_1"})))
    held.start()
    (made,) = wait(lambda: list(emulator.jobs.values()))
    again = submit(client, **{"Idempotency-Key": "job_1"})  # a resubmit is answered from the key at once
    assert (again.status_code, again.json()["jobId"]) == (202, made.id)
    assert not late
    emulator.clock.advance(60)
    held.join(timeout=10)
    assert (late[0].status_code, late[0].json()["jobId"]) == (202, made.id)
    assert [(r["status"], r["idempotency_key"]) for r in emulator.requests] == [(202, "job_1")] * 2
    assert len(emulator.jobs) == 1


# -- webhooks ----------------------------------------------------------------------------------------


def test_webhooks_progress_then_completed_signed(start, sink, wait):
    emulator, client = start(delay=0.5)
    job_id = submit(client, {**GOOD, "webhookUrl": sink.url}).json()["jobId"]
    wakes = []
    for count in (1, 2, 3):  # 40% and 75% through processing (which starts at 10% of the delay), then done
        wakes.append(next_wake(emulator))
        emulator.clock.advance(wakes[-1] - emulator.clock.monotonic())
        posts = sink.wait_for(count)
    bodies = [verify(post) for post in posts]
    assert wakes == [pytest.approx(0.05 + 0.4 * 0.45), pytest.approx(0.05 + 0.75 * 0.45), 0.5]
    assert [body["event"] for body in bodies] == ["progress", "progress", "completed"]
    for body, progress in zip(bodies[:2], (40, 75), strict=True):
        assert body == {"event": "progress", "jobId": job_id, "status": "PROCESSING",
                        "progress": progress, "model": "kling-3.0"}  # fmt: skip
    completed = bodies[2]
    job = client.get(f"/v2/jobs/{job_id}").json()
    assert completed == {
        "event": "completed", "jobId": job_id, "status": "COMPLETED", "progress": 100,
        "result": job["result"], "model": "kling-3.0", "creditCost": 10.0, "completedAt": job["completedAt"],
    }  # fmt: skip
    wait(lambda: client.get(f"/v2/jobs/{job_id}").json()["webhookStatus"] == "DELIVERED")
    assert [(sent["event"], sent["status_code"]) for sent in emulator.webhooks_sent] == [
        ("progress", 200), ("progress", 200), ("completed", 200),
    ]  # fmt: skip
    assert client.get("/_emulator/webhooks").json()["webhooks"][-1]["url"] == sink.url


def test_failed_webhook_body(start, sink):
    emulator, client = start(delay=0.1, failure_rate=1.0, progress_webhooks=False)
    job_id = submit(client, {**GOOD, "webhookUrl": sink.url}).json()["jobId"]
    emulator.clock.advance(0.1)
    [post] = sink.wait_for(1)
    body = verify(post)
    assert body == {"event": "failed", "jobId": job_id, "status": "FAILED", "error": body["error"],
                    "model": "kling-3.0"}  # fmt: skip
    assert isinstance(body["error"], str)


def test_webhook_events_choose_what_is_sent(start, sink, wait):
    emulator, client = start(delay=0.3)
    job_id = submit(client, {**GOOD, "webhookUrl": sink.url, "webhookEvents": ["completed"]}).json()["jobId"]
    only_failed = {**GOOD, "webhookUrl": sink.url, "webhookEvents": ["failed"]}
    other = submit(client, only_failed).json()["jobId"]
    emulator.clock.advance(0.3)
    [post] = sink.wait_for(1)
    wait(lambda: finished_webhooks(emulator))
    assert verify(post)["event"] == "completed"
    assert read_job(client, other)["status"] == "COMPLETED"
    assert len(sink.posts) == 1
    assert job_id != other


def test_drop_mode_sends_nothing(start, sink, wait):
    emulator, client = start(delay=0.2, webhook="drop")
    job_id = submit(client, {**GOOD, "webhookUrl": sink.url}).json()["jobId"]
    emulator.clock.advance(0.2)
    wait(lambda: finished_webhooks(emulator))
    job = read_job(client, job_id)
    assert (job["status"], job["webhookStatus"]) == ("COMPLETED", "FAILED")
    assert sink.posts == []
    assert emulator.webhooks_sent == []


def test_duplicate_mode_sends_the_final_webhook_twice(start, sink):
    emulator, client = start(delay=0.2, webhook="duplicate", progress_webhooks=False)
    submit(client, {**GOOD, "webhookUrl": sink.url})
    emulator.clock.advance(0.2)
    first, second = sink.wait_for(2)
    assert first.body == second.body
    assert verify(first)["event"] == "completed"


def test_delay_mode_sends_the_final_webhook_late(start, sink):
    emulator, client = start(delay=0.1, webhook="delay", webhook_delay=0.6, progress_webhooks=False)
    job_id = submit(client, {**GOOD, "webhookUrl": sink.url}).json()["jobId"]
    emulator.clock.advance(0.1)
    status = read_job(client, job_id)["status"]
    wake = next_wake(emulator)
    posted_before = list(sink.posts)
    emulator.clock.advance(0.6)
    [post] = sink.wait_for(1)
    assert status == "COMPLETED"
    assert wake == pytest.approx(0.7)
    assert posted_before == []
    assert verify(post)["jobId"] == job_id


def test_early_mode_delivers_the_webhook_before_answering_the_submit(start, sink):
    _, client = start(webhook="early")
    answer = submit(client, {**GOOD, "webhookUrl": sink.url})
    assert answer.status_code == 202
    assert len(sink.posts) == 1
    body = verify(sink.posts[0])
    assert body["jobId"] == answer.json()["jobId"]
    assert body["event"] == "completed"
    assert client.get(f"/v2/jobs/{body['jobId']}").json()["webhookStatus"] == "DELIVERED"


def test_a_failing_webhook_is_retried(start, sink, wait):
    emulator, client = start(delay=0.1, progress_webhooks=False)
    sink.answers = [500]
    job_id = submit(client, {**GOOD, "webhookUrl": sink.url}).json()["jobId"]
    emulator.clock.advance(0.1)
    sink.wait_for(1)
    retry_at = next_wake(emulator)
    emulator.clock.advance(0.2)
    first, second = sink.wait_for(2)
    assert retry_at == pytest.approx(0.3)
    assert first.body == second.body
    wait(lambda: client.get(f"/v2/jobs/{job_id}").json()["webhookStatus"] == "DELIVERED")
    assert [(s["attempt"], s["status_code"]) for s in emulator.webhooks_sent] == [(1, 500), (2, 200)]


def test_an_unreachable_webhook_gives_up_after_three_attempts(start, wait):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    emulator, client = start(delay=0, progress_webhooks=False)
    job_id = submit(client, {**GOOD, "webhookUrl": f"http://127.0.0.1:{port}/hook"}).json()["jobId"]
    retries = []
    for wait_before in (0.2, 0.5):
        retries.append(next_wake(emulator))
        emulator.clock.advance(wait_before)
    wait(lambda: finished_webhooks(emulator))
    assert read_job(client, job_id)["webhookStatus"] == "FAILED"
    assert retries == [pytest.approx(0.2), pytest.approx(0.7)]
    assert [s["attempt"] for s in emulator.webhooks_sent] == [1, 2, 3]
    assert all("error" in s for s in emulator.webhooks_sent)


# -- injected errors and the control routes ----------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404, 409, 429, 500, 503])
def test_injected_errors_have_the_documented_shape(shared, status):
    emulator, client = shared
    emulator.inject(status)
    assert client.get("/healthz").status_code == 200  # not an API request: untouched
    answer = submit(client)
    assert answer.status_code == status
    body = answer.json()
    assert isinstance(body["error"], str)
    if status == 400:
        assert body["details"] == []
    if status == 402:
        assert set(body) == {"error", "creditsRequired", "creditsAvailable"}
    assert ("retry-after" in answer.headers) == (status == 429)
    assert "x-request-id" in answer.headers
    assert submit(client).status_code == 202
    assert [entry["status"] for entry in emulator.requests[-2:]] == [status, 202]


def test_inject_count_and_retry_after(shared):
    emulator, client = shared
    emulator.inject(429, count=2, retry_after=0.5)
    answers = [client.get(f"/v2/jobs/{uuid.uuid4()}") for _ in range(3)]
    assert [a.status_code for a in answers] == [429, 429, 404]
    assert answers[0].headers["retry-after"] == "0.5"


def test_control_routes(start):
    emulator, client = start(delay=30)
    assert client.post("/_emulator/inject", json={"status": 503, "count": 1}).status_code == 200
    assert submit(client).status_code == 503
    assert client.post("/_emulator/inject", json={"status": 200}).status_code == 400
    assert client.post("/_emulator/inject", json={"nope": 1}).status_code == 400
    config = client.post("/_emulator/config", json={"delay": 0, "webhook": "duplicate"}).json()
    assert config["delay"] == 0
    assert config["webhook"] == "duplicate"
    assert "api_key" not in config
    assert config["api_key_set"] is True
    assert client.post("/_emulator/config", json={"webhook": "sometimes"}).status_code == 400
    assert client.post("/_emulator/config", json={"colour": "red"}).status_code == 400
    assert emulator.webhook == "duplicate"
    assert client.get("/_emulator/config").json()["webhook"] == "duplicate"
    log = client.get("/_emulator/requests").json()["requests"]
    assert [(entry["method"], entry["path"], entry["status"]) for entry in log] == [
        ("POST", "/v2/videos/generate", 503),
    ]
    assert client.get("/_emulator/webhooks").json() == {"webhooks": []}


def test_constructor_rejects_bad_settings():
    with pytest.raises(ValueError, match="webhook"):
        ApiframeEmulator(webhook="never")
    with pytest.raises(ValueError, match="failure_rate"):
        ApiframeEmulator(failure_rate=2)


# -- the command line --------------------------------------------------------------------------------


def test_cli_serves_in_the_foreground_with_the_key_from_the_environment(tmp_path: Path, wait):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "APIFRAME_API_KEY": "afk_from_env"}
    command = [
        sys.executable,
        "-m",
        "receiver.emulators.cli",
        "apiframe",
        "--port",
        str(port),
        "--delay",
        "0",
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert f"http://127.0.0.1:{port}" in line
        assert "afk_from_env" not in line
        url = f"http://127.0.0.1:{port}"
        wait(lambda: _up(url + "/healthz"))
        assert (
            httpx.post(url + "/v2/videos/generate", json=GOOD, headers={"X-API-Key": "x"}).status_code == 401
        )
        ok = httpx.post(url + "/v2/videos/generate", json=GOOD, headers={"X-API-Key": "afk_from_env"})
        assert ok.status_code == 202
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()


def _up(url: str) -> bool:
    try:
        return httpx.get(url).status_code == 200
    except httpx.TransportError:
        return False


def test_cli_reports_a_busy_port_in_one_line(capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        args = parser.parse_args(["apiframe", "--port", str(taken.getsockname()[1])])
        assert run(args) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert "cannot listen" in err
    assert run(parser.parse_args(["apiframe", "--failure-rate", "2"])) == 2
