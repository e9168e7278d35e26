"""Admin routes, health and metrics, over real HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.stack import receiver_stack


def test_admin_routes_need_the_bearer_token_and_are_off_without_one(tmp_path: Path, sink) -> None:
    with receiver_stack(tmp_path, sink.url) as stack:
        missing = httpx.get(f"{stack.url}/jobs")
        wrong = httpx.post(f"{stack.url}/tick", headers={"Authorization": "Bearer nope"})
        health = httpx.get(f"{stack.url}/healthz")
    with receiver_stack(tmp_path / "off", sink.url, admin_token=None) as stack:
        off = httpx.get(f"{stack.url}/jobs", headers={"Authorization": "Bearer anything"})

    assert missing.status_code == 401
    assert wrong.status_code == 401
    assert off.status_code == 403
    assert "RECEIVER_ADMIN_TOKEN" in off.json()["error"]
    assert health.status_code == 200


def test_post_jobs_names_every_bad_field_and_sends_nothing(tmp_path: Path, sink) -> None:
    with receiver_stack(tmp_path, sink.url) as stack:
        not_json = stack.admin.post("/jobs", content=b"{nope")
        invalid = stack.admin.post(
            "/jobs", json={"provider": "midjourney", "prompt": "", "mode": "ultra", "duration": 30}
        )
        unsupported = stack.admin.post(
            "/jobs", json={"provider": "runbase", "prompt": "x", "negative_prompt": "blur"}
        )
        no_aspect = stack.admin.post(
            "/jobs", json={"provider": "apiframe", "prompt": "x", "aspect_ratio": "1:1"}
        )
        listed = stack.admin.get("/jobs").json()["jobs"]

    assert not_json.status_code == 400
    assert invalid.status_code == 422
    assert set(invalid.json()["errors"]) == {"provider", "prompt", "mode", "duration"}
    assert unsupported.status_code == 422
    assert "runbase" in unsupported.json()["errors"]["negative_prompt"]
    assert no_aspect.status_code == 422
    assert "apiframe" in no_aspect.json()["errors"]["aspect_ratio"]
    assert listed == []
    assert stack.runbase.requests == []
    assert stack.apiframe.requests == []


def test_list_show_filter_limit_replay_and_metrics(tmp_path: Path, sink, wait) -> None:
    quiet = {"apiframe": {"webhook": "drop", "delay": 600}, "expected_seconds": 600}
    with receiver_stack(tmp_path, sink.url, **quiet) as stack:
        first = stack.submit("apiframe", prompt="one")
        second = stack.submit("apiframe", prompt="two")
        newest_first = [j["id"] for j in stack.admin.get("/jobs").json()["jobs"]]
        limited = stack.admin.get("/jobs", params={"limit": 1}).json()["jobs"]
        too_many = stack.admin.get("/jobs", params={"limit": 5000})
        bad_status = stack.admin.get("/jobs", params={"status": "done"})
        none_succeeded = stack.admin.get("/jobs", params={"status": "succeeded"}).json()["jobs"]
        unknown = stack.admin.get("/jobs/job_unknown")
        not_finished = stack.admin.post(f"/jobs/{first['id']}/replay")
        no_such = stack.admin.post("/jobs/job_unknown/replay")
        metrics = httpx.get(f"{stack.url}/metrics").text

    assert newest_first == [second["id"], first["id"]]
    assert [j["id"] for j in limited] == [second["id"]]
    assert too_many.status_code == 400
    assert "limit" in too_many.json()["error"]
    assert bad_status.status_code == 400
    assert none_succeeded == []
    assert unknown.status_code == 404
    assert not_finished.status_code == 409
    assert no_such.status_code == 404
    assert 'receiver_jobs{provider="apiframe",status="submitted"} 2.0' in metrics
