"""The Runbase emulator over real HTTP: every route, error code, status step and the rate limit."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from datetime import timedelta
from typing import Any

import httpx
import pytest

from receiver.background import BackgroundServer
from receiver.clock import VirtualClock
from receiver.emulators.common import SAMPLE
from receiver.emulators.runbase import RunbaseEmulator
from receiver.events import iso

KEY = "rb_test_key"
AUTH = {"Authorization": f"Bearer {KEY}"}
GOOD = {"model": "kling/kling-3.0", "input": {"prompt": "a ceramic lamp, cinematic"}}


@pytest.fixture
def start(serve):
    """`start(**knobs)`: an emulator with the test key (and room for fast polling) on a virtual clock,
    served, and a client."""

    def build(**knobs: Any) -> tuple[RunbaseEmulator, httpx.Client]:
        emulator = RunbaseEmulator(**{"api_key": KEY, "rate_limit": 1000, "clock": VirtualClock(), **knobs})
        return emulator, serve(emulator.app, headers=AUTH)

    return build


@pytest.fixture(scope="module")
def shared():
    """One emulator for tests that leave nothing behind that others could see (no rate limit to speak of)."""
    emulator = RunbaseEmulator(api_key=KEY, delay=600, rate_limit=10_000, balance=1e9)
    with BackgroundServer(emulator.app) as server, httpx.Client(base_url=server.url, headers=AUTH) as client:
        yield emulator, client


def submit(client: httpx.Client, body: Any = None, **headers: str) -> httpx.Response:
    return client.post("/api/v1/runs", json=GOOD if body is None else body, headers=headers)


def error_of(answer: httpx.Response) -> tuple[int, str]:
    body = answer.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "code"}
    assert isinstance(body["error"]["message"], str)
    return answer.status_code, body["error"]["code"]


def read_run(client: httpx.Client, run_id: str) -> dict[str, Any]:
    run: dict[str, Any] = client.get(f"/api/v1/runs/{run_id}").json()
    return run


# -- plain routes and keys ---------------------------------------------------------------------------


def test_healthz_and_files(shared):
    _, client = shared
    assert client.get("/healthz").status_code == 200
    video = client.get("/files/run_abc.mp4")
    assert video.headers["content-type"] == "video/mp4"
    assert video.content == SAMPLE.read_bytes()


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({"Authorization": ""}, "missing_api_key"),
        ({"Authorization": "Bearer"}, "missing_api_key"),
        ({"Authorization": f"Basic {KEY}"}, "missing_api_key"),
        ({"Authorization": "Bearer rb_wrong"}, "invalid_api_key"),
    ],
)
def test_keys_are_checked_on_every_route(shared, headers, code):
    _, client = shared
    assert error_of(submit(client, **headers)) == (401, code)
    assert error_of(client.get("/api/v1/runs/run_x", headers=headers)) == (401, code)


def test_any_key_when_none_is_set(serve):
    client = serve(RunbaseEmulator().app, headers={"Authorization": "Bearer anything"})
    assert submit(client).status_code == 201


# -- submit validation -------------------------------------------------------------------------------


def test_submit_accepts_every_documented_field_and_answers_201_pending(shared):
    _, client = shared
    body = {
        "model": "kling/kling-3.0",
        "input": {
            "prompt": "a lamp",
            "aspect_ratio": "9:16",
            "mode": "4K",
            "duration": 7.5,
            "image_urls": ["https://example.com/first.png", "https://example.com/last.png"],
        },
    }
    answer = submit(client, body)
    assert answer.status_code == 201
    run = answer.json()
    assert run["id"].startswith("run_")
    assert run["model"] == "kling/kling-3.0"
    assert run["status"] == "pending"
    assert run["costUsd"] == 0.5
    assert run["createdAt"].endswith("Z")
    assert run["input"] == body["input"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"[]", "invalid_json"),
        ({"input": {"prompt": "x"}}, "missing_model"),
        ({"model": "kling/kling-2.1", "input": {"prompt": "x"}}, "model_not_found"),
        ({"model": "kling/kling-3.0"}, "missing_input"),
        ({"model": "kling/kling-3.0", "input": None}, "missing_input"),
        ({**GOOD, "webhook": "https://example.com"}, "invalid_input"),
        ({"model": "kling/kling-3.0", "input": "a lamp"}, "invalid_input"),
        ({"model": "kling/kling-3.0", "input": {}}, "invalid_input"),
        ({"model": "kling/kling-3.0", "input": {"prompt": ""}}, "invalid_input"),
        ({"model": "kling/kling-3.0", "input": {"prompt": "x", "seed": 1}}, "invalid_input"),
        ({"model": "kling/kling-3.0", "input": {"prompt": "x", "aspect_ratio": "4:3"}}, "invalid_input"),
        ({"model": "kling/kling-3.0", "input": {"prompt": "x", "mode": "standard"}}, "invalid_input"),
        ({"model": "kling/kling-3.0", "input": {"prompt": "x", "duration": "5"}}, "invalid_input"),
        ({"model": "kling/kling-3.0", "input": {"prompt": "x", "duration": True}}, "invalid_input"),
        ({"model": "kling/kling-3.0", "input": {"prompt": "x", "image_urls": []}}, "invalid_input"),
        ({"model": "kling/kling-3.0", "input": {"prompt": "x", "image_urls": ["a", "b"]}}, "invalid_input"),
        (
            {"model": "kling/kling-3.0", "input": {"prompt": "x", "image_urls": ["https://e.com/i.png"] * 3}},
            "invalid_input",
        ),
    ],
)
def test_submit_errors(shared, body, code):
    emulator, client = shared
    runs = len(emulator.runs)
    if isinstance(body, bytes):
        answer = client.post("/api/v1/runs", content=body, headers={"Content-Type": "application/json"})
    else:
        answer = submit(client, body)
    assert error_of(answer) == (400, code)
    assert len(emulator.runs) == runs


def test_invalid_input_names_the_field(shared):
    _, client = shared
    answer = submit(client, {"model": "kling/kling-3.0", "input": {"prompt": "x", "seed": 1}})
    assert "seed" in answer.json()["error"]["message"]


# -- money and access --------------------------------------------------------------------------------


def test_insufficient_balance_is_402(start):
    emulator, client = start(balance=0.75, cost_usd=0.5)
    assert submit(client).status_code == 201
    assert emulator.balance == 0.25
    assert error_of(submit(client)) == (402, "insufficient_balance")
    assert len(emulator.runs) == 1


def test_spend_limit_is_per_key_and_403(start):
    _, client = start(api_key=None, spend_limit=1.0, cost_usd=0.5)
    assert [submit(client, Authorization="Bearer a").status_code for _ in range(2)] == [201, 201]
    assert error_of(submit(client, Authorization="Bearer a")) == (403, "api_key_spend_limit_exceeded")
    assert submit(client, Authorization="Bearer b").status_code == 201


def test_ip_allow_list_is_403(start):
    _, client = start(allowed_ips=["10.1.2.3"])
    assert error_of(submit(client)) == (403, "ip_not_allowed")
    assert error_of(client.get("/api/v1/runs/run_x")) == (403, "ip_not_allowed")
    _, allowed = start(allowed_ips=["127.0.0.1"])
    assert submit(allowed).status_code == 201


# -- status over time --------------------------------------------------------------------------------


def test_status_goes_pending_processing_succeeded(start):
    emulator, client = start(delay=1.0)
    clock = emulator.clock
    run_id = submit(client).json()["id"]
    seen = []
    for seconds in (0, 0.0625, 0.1875, 0.5, 0.25):  # pending for 10% of the delay, then processing
        clock.advance(seconds)
        seen.append(read_run(client, run_id))

    assert [(run["status"], run["completedAt"]) for run in seen] == [
        ("pending", None), ("pending", None), ("processing", None), ("processing", None),
        ("succeeded", iso(clock.start + timedelta(seconds=1))),
    ]  # fmt: skip
    assert all(run["output"] is None for run in seen[:-1])
    final = seen[-1]
    assert final["createdAt"] == iso(clock.start)
    assert final["error"] is None
    [url] = final["output"]["urls"]
    assert url.endswith(f"/files/{run_id}.mp4")
    assert httpx.get(url).headers["content-type"] == "video/mp4"


def test_running_can_stand_in_for_processing(start):
    emulator, client = start(delay=0.5, processing_status="running")
    run_id = submit(client).json()["id"]
    emulator.clock.advance(0.25)
    assert read_run(client, run_id)["status"] == "running"


def test_failed_run_has_an_error_message(start):
    emulator, client = start(delay=0.1, failure_rate=1.0)
    run_id = submit(client).json()["id"]
    emulator.clock.advance(0.1)
    run = read_run(client, run_id)
    assert run["status"] == "failed"
    assert isinstance(run["error"], str)
    assert run["error"]
    assert run["output"] is None


def test_unknown_run_is_404(shared):
    _, client = shared
    assert error_of(client.get("/api/v1/runs/run_nope")) == (404, "run_not_found")


# -- rate limit --------------------------------------------------------------------------------------


def test_rate_limit_counts_submits_and_reads_per_key(start):
    emulator, client = start(api_key=None, rate_limit=3, rate_window=0.5, delay=30)
    run_id = submit(client, Authorization="Bearer a").json()["id"]
    read = client.get(f"/api/v1/runs/{run_id}", headers={"Authorization": "Bearer a"})
    assert read.status_code == 200
    assert submit(client, Authorization="Bearer a").status_code == 201
    limited = client.get(f"/api/v1/runs/{run_id}", headers={"Authorization": "Bearer a"})
    assert error_of(limited) == (429, "RATE_LIMITED")
    assert "retry-after" not in limited.headers
    assert error_of(submit(client, Authorization="Bearer a")) == (429, "RATE_LIMITED")
    assert submit(client, Authorization="Bearer b").status_code == 201
    emulator.clock.advance(0.5)
    assert submit(client, Authorization="Bearer a").status_code == 201
    key_a = hashlib.sha256(b"a").hexdigest()[:12]
    log = emulator.requests
    assert [entry["status"] for entry in log[:6]] == [201, 200, 201, 429, 429, 201]
    assert [entry["key"] for entry in log[:6]] == [key_a] * 5 + [hashlib.sha256(b"b").hexdigest()[:12]]
    assert all(set(entry) == {"t", "method", "path", "status", "key"} for entry in log)


def test_refused_requests_do_not_extend_the_window(start):
    emulator, client = start(rate_limit=2, rate_window=1.5, delay=30)
    assert [submit(client).status_code for _ in range(2)] == [201, 201]
    refused = []
    for _ in range(3):  # hammering while refused: if refusals counted, the window would stay full
        emulator.clock.advance(0.45)
        refused.append(client.get("/api/v1/runs/run_x").status_code)
    emulator.clock.advance(0.15)
    assert refused == [429, 429, 429]
    assert client.get("/api/v1/runs/run_x").status_code == 404
    assert [entry["t"] for entry in emulator.requests][-1] == pytest.approx(1.5)


# -- injected errors and the control routes ----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "invalid_input"),
        (401, "invalid_api_key"),
        (402, "insufficient_balance"),
        (403, "api_key_spend_limit_exceeded"),
        (404, "run_not_found"),
        (429, "RATE_LIMITED"),
        (500, "internal_error"),
    ],
)
def test_injected_errors_carry_a_code(shared, status, code):
    emulator, client = shared
    emulator.inject(status)
    assert client.get("/healthz").status_code == 200  # not an API request: untouched
    assert error_of(submit(client)) == (status, code)
    assert submit(client).status_code == 201


def test_inject_count_and_code(shared):
    emulator, client = shared
    emulator.inject(429, count=2, code="USAGE_EXCEEDED")
    answers = [error_of(client.get("/api/v1/runs/run_x")) for _ in range(3)]
    assert answers == [(429, "USAGE_EXCEEDED"), (429, "USAGE_EXCEEDED"), (404, "run_not_found")]


def test_inject_for_a_stretch_of_time(start):
    emulator, client = start()
    assert client.post("/_emulator/inject", json={"status": 429, "seconds": 30}).status_code == 200
    answers = [error_of(submit(client)) for _ in range(3)]
    emulator.clock.advance(29.9)
    answers.append(error_of(client.get("/api/v1/runs/run_x")))
    assert answers == [(429, "RATE_LIMITED")] * 4
    emulator.clock.advance(0.1)
    assert submit(client).status_code == 201
    assert client.post("/_emulator/inject", json={"status": 429, "seconds": -1}).status_code == 400


def test_control_routes(start):
    emulator, client = start(delay=30)
    assert client.post("/_emulator/inject", json={"status": 500, "code": "boom"}).status_code == 200
    assert error_of(submit(client)) == (500, "boom")
    assert client.post("/_emulator/inject", json={"status": 500, "retry_after": 1}).status_code == 400
    config = client.post("/_emulator/config", json={"rate_limit": 1, "spend_limit": 3}).json()
    assert config["rate_limit"] == 1
    assert config["spend_limit"] == 3
    assert "api_key" not in config
    assert client.post("/_emulator/config", json={"rate_limit": 0}).status_code == 400
    assert client.post("/_emulator/config", json={"colour": "red"}).status_code == 400
    assert emulator.rate_limit == 1
    log = client.get("/_emulator/requests").json()["requests"]
    assert [(entry["method"], entry["path"], entry["status"]) for entry in log] == [
        ("POST", "/api/v1/runs", 500),
    ]
    assert KEY not in str(log)


def test_constructor_rejects_bad_settings():
    with pytest.raises(ValueError, match="rate_limit"):
        RunbaseEmulator(rate_limit=0)
    with pytest.raises(ValueError, match="processing_status"):
        RunbaseEmulator(processing_status="busy")


# -- the command line --------------------------------------------------------------------------------


def test_cli_serves_in_the_foreground_with_the_key_from_the_environment(wait):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "RUNBASE_API_KEY": "rb_from_env"}
    command = [
        sys.executable,
        "-m",
        "receiver.emulators.cli",
        "runbase",
        "--port",
        str(port),
        "--rate-limit",
        "5",
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert f"http://127.0.0.1:{port}" in line
        assert "rb_from_env" not in line
        url = f"http://127.0.0.1:{port}"
        wait(lambda: _up(url + "/healthz"))
        assert (
            httpx.post(url + "/api/v1/runs", json=GOOD, headers={"Authorization": "Bearer x"}).status_code
            == 401
        )
        ok = httpx.post(url + "/api/v1/runs", json=GOOD, headers={"Authorization": "Bearer rb_from_env"})
        assert ok.status_code == 201
        assert httpx.get(url + "/_emulator/config").json()["rate_limit"] == 5
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()


def _up(url: str) -> bool:
    try:
        return httpx.get(url).status_code == 200
    except httpx.TransportError:
        return False


def test_injected_faults_take_effect_and_spoil_the_answer(start):
    emulator, client = start()
    assert client.post("/_emulator/inject", json={"fault": "malformed"}).status_code == 200
    spoilt = submit(client)
    assert spoilt.status_code == 201
    with pytest.raises(json.JSONDecodeError):
        spoilt.json()
    assert len(emulator.runs) == 1  # the run exists although its answer cannot be read
    emulator.inject_fault("hang", hold=40)
    with pytest.raises(httpx.ReadTimeout):
        client.post("/api/v1/runs", json=GOOD, timeout=0.5)
    assert len(emulator.runs) == 2  # made before the answer was held back
    assert [entry.get("fault") for entry in emulator.requests] == ["malformed", "hang"]
    assert client.post("/_emulator/inject", json={"fault": "slow"}).status_code == 400
