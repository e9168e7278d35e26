"""The job JSON and the event: exactly DESIGN's keys, ISO 8601 UTC times, stable ids."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from receiver.events import (
    TERMINAL,
    Delivery,
    DeliveryStatus,
    Job,
    JobError,
    JobStatus,
    attempt,
    event_type,
    iso,
    make_event,
    new_event_id,
    new_job_id,
    parse_iso,
)
from receiver.generation import KlingRequest

CREATED = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
JOB_KEYS = {
    "id",
    "provider",
    "provider_job_id",
    "model",
    "status",
    "request",
    "metadata",
    "output_urls",
    "error",
    "progress",
    "created_at",
    "submitted_at",
    "completed_at",
    "completed_via",
    "attempts",
    "cost",
    "deliveries",
}
REQUEST_KEYS = {
    "prompt",
    "mode",
    "aspect_ratio",
    "duration",
    "start_image",
    "end_image",
    "generate_audio",
    "negative_prompt",
    "multi_prompt",
}


def _job(**changes: object) -> Job:
    job = Job(
        id="job_1",
        provider="apiframe",
        status=JobStatus.SUCCEEDED,
        request=KlingRequest(prompt="a fox").params(),
        metadata={"campaign": "spring"},
        provider_job_id="af_123",
        output_urls=["https://cdn.example.com/v.mp4"],
        progress=100,
        created_at=CREATED,
        submitted_at=CREATED + timedelta(seconds=1),
        completed_at=CREATED + timedelta(seconds=150),
        completed_via="webhook",
        attempts=[attempt("apiframe", "accepted", "af_123", CREATED + timedelta(seconds=1))],
        cost=10.0,
        deliveries=[Delivery(handler="slack", status=DeliveryStatus.RETRYING, attempts=2, last_error="503")],
    )
    for name, value in changes.items():
        setattr(job, name, value)
    return job


def test_job_json_has_exactly_the_design_keys() -> None:
    data = _job().to_json()
    assert set(data) == JOB_KEYS
    assert set(data["request"]) == REQUEST_KEYS


def test_job_json_values() -> None:
    assert _job().to_json() == {
        "id": "job_1",
        "provider": "apiframe",
        "provider_job_id": "af_123",
        "model": "kling-3.0",
        "status": "succeeded",
        "request": KlingRequest(prompt="a fox").params(),
        "metadata": {"campaign": "spring"},
        "output_urls": ["https://cdn.example.com/v.mp4"],
        "error": None,
        "progress": 100,
        "created_at": "2026-01-01T12:00:00Z",
        "submitted_at": "2026-01-01T12:00:01Z",
        "completed_at": "2026-01-01T12:02:30Z",
        "completed_via": "webhook",
        "attempts": [
            {"provider": "apiframe", "outcome": "accepted", "answer": "af_123", "at": "2026-01-01T12:00:01Z"}
        ],
        "cost": {"amount": 10.0, "unit": "credits", "source": "provider"},
        "deliveries": [{"handler": "slack", "status": "retrying", "attempts": 2, "last_error": "503"}],
    }


def test_job_json_of_a_fresh_job_has_nulls_not_missing_keys() -> None:
    job = Job(id="job_2", provider="runbase", status=JobStatus.PENDING, request={}, created_at=CREATED)
    data = job.to_json()
    assert set(data) == JOB_KEYS
    assert data["provider_job_id"] is None
    assert data["submitted_at"] is None
    assert data["completed_at"] is None
    assert data["completed_via"] is None
    assert data["error"] is None
    assert data["progress"] is None
    assert data["output_urls"] == []
    assert data["attempts"] == []
    assert data["cost"] is None
    assert data["deliveries"] == []


def test_job_json_error_is_code_and_message() -> None:
    job = _job(status=JobStatus.FAILED, error=JobError(code="timeout", message="no final status"))
    assert job.to_json()["error"] == {"code": "timeout", "message": "no final status"}


def test_job_json_is_plain_json() -> None:
    data = _job().to_json()
    assert json.loads(json.dumps(data)) == data


def test_job_json_times_are_utc_even_from_another_zone() -> None:
    plus_two = timezone(timedelta(hours=2))
    job = _job(created_at=datetime(2026, 1, 1, 14, 0, tzinfo=plus_two))
    assert job.to_json()["created_at"] == "2026-01-01T12:00:00Z"


def test_job_json_without_deliveries() -> None:
    data = _job().to_json(deliveries=False)
    assert set(data) == JOB_KEYS - {"deliveries"}


def test_event_shape() -> None:
    job = _job()
    event = make_event(job, "evt_1", now=CREATED)
    assert event == {
        "id": "evt_1",
        "type": "job.succeeded",
        "created_at": "2026-01-01T12:02:30Z",
        "job": job.to_json(deliveries=False),
    }
    assert "deliveries" not in event["job"]


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (JobStatus.SUCCEEDED, "job.succeeded"),
        (JobStatus.FAILED, "job.failed"),
        (JobStatus.CANCELED, "job.failed"),
    ],
)
def test_every_end_but_success_is_job_failed(status: JobStatus, kind: str) -> None:
    assert event_type(status) == kind
    assert make_event(_job(status=status), "evt_1", now=CREATED)["type"] == kind


def test_an_event_is_created_at_the_completion_or_else_now() -> None:
    now = CREATED + timedelta(hours=1)
    job = _job()
    assert make_event(job, "evt_1", now=now)["created_at"] == iso(job.completed_at)
    job.completed_at = None
    assert make_event(job, "evt_1", now=now)["created_at"] == "2026-01-01T13:00:00Z"


def test_event_is_the_same_when_built_again() -> None:
    job = _job()
    assert make_event(job, "evt_1", now=CREATED) == make_event(job, "evt_1", now=CREATED)


def test_terminal_statuses() -> None:
    terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED}
    assert {s for s in JobStatus if s.terminal} == terminal
    assert set(TERMINAL) == terminal


def test_ids_have_their_prefix_and_do_not_repeat() -> None:
    jobs = {new_job_id() for _ in range(100)}
    events = {new_event_id() for _ in range(100)}
    assert len(jobs) == len(events) == 100
    assert all(j.startswith("job_") for j in jobs)
    assert all(e.startswith("evt_") for e in events)


def test_iso_round_trip() -> None:
    moment = datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)
    assert iso(moment) == "2026-03-04T05:06:07.890000Z"
    assert parse_iso(iso(moment)) == moment
    assert iso(None) is None
    assert parse_iso(None) is None


def test_job_error_from_json() -> None:
    assert JobError.from_json({"code": "c", "message": "m"}) == JobError("c", "m")
    assert JobError.from_json(None) is None
    assert JobError.from_json({}) is None
