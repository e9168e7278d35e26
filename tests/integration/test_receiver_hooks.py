"""The webhook route refuses what it must, and records a completion exactly once under races."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from receiver.bodies import BodyReads
from receiver.clock import VirtualClock
from receiver.serving import ServerLimits
from receiver.signing import WebhookSigner
from tests.support.stack import ADMIN, SECRET, apiframe_body, apiframe_signature, receiver_stack

QUIET = {"apiframe": {"webhook": "drop", "delay": 600}, "expected_seconds": 600}


def test_bad_tokens_and_signatures_get_401_and_cause_no_delivery(tmp_path: Path, sink) -> None:
    with receiver_stack(tmp_path, sink.url, **QUIET) as stack:
        job = stack.submit("apiframe")
        other = stack.submit("apiframe")
        body = apiframe_body(job["provider_job_id"])
        signed = {"X-Webhook-Signature": apiframe_signature(body)}
        good = stack.hook_url(job["id"])
        three_days_ago = VirtualClock(stack.clock() - timedelta(days=3))
        expired = WebhookSigner(SECRET, clock=three_days_ago).url(stack.url, job["id"], "apiframe")
        cases = {
            "tampered": good[:-3] + ("aaa" if not good.endswith("aaa") else "bbb"),
            "expired": expired,
            "other job": stack.hook_url(other["id"]),
            "other provider": f"{stack.url}/hooks/apiframe/{stack.receiver.signer.token(job['id'], 'runbase')}",
            "wrong secret": WebhookSigner("not-the-secret").url(stack.url, job["id"], "apiframe"),
        }
        answers = {name: httpx.post(url, content=body, headers=signed) for name, url in cases.items()}
        answers["bad signature"] = httpx.post(
            good, content=body, headers={"X-Webhook-Signature": apiframe_signature(body, "afk_other")}
        )
        answers["signature of another body"] = httpx.post(
            good, content=body, headers={"X-Webhook-Signature": apiframe_signature(body + b" ")}
        )
        after = stack.job(job["id"])
        tick = stack.admin.post("/tick").json()

    assert {name: a.status_code for name, a in answers.items()} == dict.fromkeys(answers, 401)
    for answer in answers.values():
        assert SECRET not in answer.text
    assert after["status"] == "submitted"
    assert after["deliveries"] == []
    assert tick["delivered"] == 0
    assert sink.posts == []


def test_route_answers_for_unknown_jobs_bad_bodies_and_big_bodies(tmp_path: Path, sink) -> None:
    with receiver_stack(tmp_path, sink.url, **QUIET) as stack:
        job = stack.submit("apiframe")
        url = stack.hook_url(job["id"])
        unknown = httpx.post(stack.hook_url("job_unknown"), content=apiframe_body("x"))
        not_json = httpx.post(url, content=b"not json")
        a_list = httpx.post(url, content=b"[1, 2]")
        names_other = httpx.post(url, content=apiframe_body("2f1c6f0e-0000-4000-8000-000000000000"))
        too_big = httpx.post(url, content=b"{" + b" " * (1024 * 1024) + b"}")
        after = stack.job(job["id"])

    assert unknown.status_code == 404
    assert not_json.status_code == 400
    assert a_list.status_code == 400
    assert names_other.status_code == 400
    assert too_big.status_code == 413
    assert after["status"] == "submitted"


def test_progress_webhook_updates_progress_only(tmp_path: Path, sink) -> None:
    with receiver_stack(tmp_path, sink.url, **QUIET) as stack:
        job = stack.submit("apiframe")
        answer = httpx.post(
            stack.hook_url(job["id"]), content=apiframe_body(job["provider_job_id"], event="progress")
        )
        after = stack.job(job["id"])

    assert answer.status_code == 200
    assert after["status"] == "running"
    assert after["progress"] == 40
    assert after["deliveries"] == []


def test_signature_is_required_when_the_setting_says_so(tmp_path: Path, sink) -> None:
    with receiver_stack(tmp_path, sink.url, require_signature=True, **QUIET) as stack:
        job = stack.submit("apiframe")
        body = apiframe_body(job["provider_job_id"])
        unsigned = httpx.post(stack.hook_url(job["id"]), content=body)
        signed = httpx.post(
            stack.hook_url(job["id"]), content=body, headers={"X-Webhook-Signature": apiframe_signature(body)}
        )

    assert unsigned.status_code == 401
    assert signed.status_code == 200


def test_ten_concurrent_webhooks_and_a_racing_poll_give_one_delivery(
    tmp_path: Path, sink, store_url: str
) -> None:
    settings = {"apiframe": {"webhook": "drop", "delay": 0}, "expected_seconds": 0.01}
    with receiver_stack(tmp_path, sink.url, database_url=store_url, run_worker=False, **settings) as stack:
        job = stack.submit("apiframe")
        body = apiframe_body(job["provider_job_id"])
        headers = {"X-Webhook-Signature": apiframe_signature(body)}
        url = stack.hook_url(job["id"])
        stack.clock.advance(1)  # the reconciliation poll is due: the tick races the webhooks
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


@pytest.mark.parametrize("shape", ["videoUrl", "videos", "string"])
def test_every_documented_result_shape_is_understood(tmp_path: Path, sink, shape: str) -> None:
    result = {
        "videoUrl": {"videoUrl": "http://127.0.0.1:9/a.mp4"},
        "videos": {"videos": ["http://127.0.0.1:9/a.mp4"]},
        "string": "http://127.0.0.1:9/a.mp4",
    }[shape]
    with receiver_stack(tmp_path, sink.url, **QUIET) as stack:
        job = stack.submit("apiframe")
        answer = httpx.post(
            stack.hook_url(job["id"]), content=apiframe_body(job["provider_job_id"], result=result)
        )
        done = stack.job(job["id"])

    assert answer.status_code == 200
    assert done["output_urls"] == ["http://127.0.0.1:9/a.mp4"], answer.text
    assert json.loads(answer.text)["status"] == "succeeded"


def test_a_progress_webhook_whose_commit_fails_is_answered_503_and_can_be_sent_again(
    tmp_path: Path, sink
) -> None:
    with receiver_stack(tmp_path, sink.url, **QUIET) as stack:
        job = stack.submit("apiframe")
        body = apiframe_body(job["provider_job_id"], event="progress")
        db = sqlite3.connect(tmp_path / "receiver.db", isolation_level=None)
        db.execute(
            f"CREATE TRIGGER refuse BEFORE UPDATE ON receiver_jobs WHEN NEW.id = '{job['id']}' "
            "BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
        refused = httpx.post(stack.hook_url(job["id"]), content=body)
        unchanged = stack.job(job["id"])
        db.execute("DROP TRIGGER refuse")
        db.close()
        again = httpx.post(stack.hook_url(job["id"]), content=body)
        after = stack.job(job["id"])

    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "5"
    assert unchanged["progress"] is None
    assert again.status_code == 200
    assert again.json() == {"ok": True, "status": "running", "duplicate": False}
    assert after["progress"] == 40


def test_around_the_webhook_road_the_app_answers_as_before(tmp_path: Path, sink) -> None:
    """The road is served in front of Starlette; paths and methods it does not take still get the app's
    answers (405 for another method on a webhook path, 404 for a path the route would not match)."""
    with receiver_stack(tmp_path, sink.url, **QUIET) as stack:
        job = stack.submit("apiframe")
        url = stack.hook_url(job["id"])
        answers = {
            "GET": httpx.get(url).status_code,
            "PUT": httpx.put(url, content=b"{}").status_code,
            "no token": httpx.post(f"{stack.url}/hooks/apiframe", content=b"{}").status_code,
            "empty provider": httpx.post(f"{stack.url}/hooks//token", content=b"{}").status_code,
            "one segment more": httpx.post(f"{url}/more", content=b"{}").status_code,
        }
        health = httpx.get(f"{stack.url}/healthz")

    assert answers == {
        "GET": 405,
        "PUT": 405,
        "no token": 404,
        "empty provider": 404,
        "one segment more": 404,
    }
    assert health.status_code == 200


def raw_exchange(url: str, request: bytes) -> tuple[bytes, float]:
    """Send `request` on a fresh connection; everything answered until the server closes, and the
    seconds that took."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data, time.monotonic() - started


def test_a_slow_webhook_body_gets_408_and_the_next_webhooks_are_recorded(tmp_path: Path, sink) -> None:
    limits = ServerLimits(body_timeout=0.3)
    with receiver_stack(tmp_path, sink.url, limits=limits, **QUIET) as stack:
        job = stack.submit("apiframe")
        path = stack.hook_url(job["id"]).removeprefix(stack.url)
        head = f"POST {path} HTTP/1.1\r\nHost: receiver\r\nContent-Length: 100\r\n\r\n".encode()
        slow, elapsed = raw_exchange(stack.url, head + b'{"event": ')
        admin_slow, _ = raw_exchange(
            stack.url,
            f"POST /jobs HTTP/1.1\r\nHost: receiver\r\nAuthorization: Bearer {ADMIN}\r\n"
            "Content-Length: 100\r\n\r\n{".encode(),
        )
        body = apiframe_body(job["provider_job_id"], event="progress")
        answers = [httpx.post(stack.hook_url(job["id"]), content=body) for _ in range(3)]
        after = stack.job(job["id"])

    assert slow.startswith(b"HTTP/1.1 408 "), slow
    assert slow.endswith(b"\r\n\r\nrequest body too slow")
    assert b"connection: close" in slow.lower()
    assert 0.3 <= elapsed < 0.3 * (1 + 1 / BodyReads.SWEEPS) + 1.0  # the bound, and a second of slack
    assert admin_slow.startswith(b"HTTP/1.1 408 ")  # the rest of the app: BodyDeadline
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert after["progress"] == 40
