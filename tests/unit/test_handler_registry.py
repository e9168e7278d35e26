"""The built-in handlers as config builds them, and their pure parts: signing, status mapping, keys, rows."""

from __future__ import annotations

import base64
import inspect
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from handlers import (
    BUILTIN,
    ConfigError,
    Handler,
    PermanentError,
    RetryLater,
    build_handlers,
    load_handler_class,
)
from handlers._http import DeliveryFailed, check_status
from handlers.database import COLUMNS, event_row, upsert_sql
from handlers.forward import sign, signed_headers
from handlers.log import LogHandler
from handlers.storage import extension, parse_target
from receiver.clock import VirtualClock
from receiver.events import Job, JobError, JobStatus, make_event
from receiver.schedule import parse_retry_after

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MINIMAL: dict[str, dict[str, Any]] = {
    "log": {},
    "forward": {"url": "https://example.com/hook", "secret": SECRET},
    "slack": {"webhook_url": "https://hooks.slack.com/services/T0/B0/xyz"},
    "storage": {"target": "/tmp/videos"},
    "database": {"url": "sqlite:///events.db"},
}


def build_one(type_name: str, **keys: Any) -> Any:
    (spec,) = build_handlers([{"name": "h", "type": type_name, **keys}])
    return spec


@pytest.mark.parametrize("type_name", sorted(BUILTIN))
def test_every_builtin_builds_from_its_minimal_table(type_name: str) -> None:
    cls = load_handler_class(type_name)
    assert inspect.iscoroutinefunction(cls.aclose)
    spec = build_one(type_name, **MINIMAL[type_name])
    assert isinstance(spec.handler, Handler)
    assert spec.type == type_name


def test_handlers_that_take_a_clock_get_the_receivers_and_a_table_cannot_set_one() -> None:
    clock = VirtualClock()
    forward, rows = build_handlers(
        [
            {"name": "f", "type": "forward", **MINIMAL["forward"]},
            {"name": "d", "type": "database", **MINIMAL["database"]},
        ],
        clock=clock,
    )
    assert forward.handler.clock is clock
    assert rows.handler.clock is clock
    with pytest.raises(ConfigError, match=r"^handler 'h': unknown key 'clock'$"):
        build_one("forward", clock="x", **MINIMAL["forward"])


def test_storage_gets_a_long_timeout_and_the_table_can_change_it() -> None:
    assert build_one("storage", target="/tmp/v").timeout == 300
    spec = build_one("storage", target="s3://videos/kling", timeout=900)
    assert spec.timeout == 900
    assert build_one("slack", **MINIMAL["slack"]).timeout == 60


@pytest.mark.parametrize(
    ("type_name", "keys", "says"),
    [
        ("forward", {"url": "https://x.example", "secret": "hunter2-not-whsec"}, "key 'secret': must start"),
        ("forward", {"url": "https://x.example", "secret": "whsec_%%%notbase64"}, "key 'secret'"),
        ("forward", {"url": "ftp://x.example/hook", "secret": SECRET}, "key 'url'"),
        ("forward", {"url": "https://x.example", "secret": SECRET, "headers": {"a": 1}}, "key 'headers'"),
        ("slack", {"webhook_url": "hooks.slack.com/services/T0/B0/s3cr3t"}, "key 'webhook_url'"),
        ("slack", {"webhook_url": "https://hooks.slack.com/x", "channel": 5}, "key 'channel'"),
        ("storage", {"target": "ftp://host/videos"}, "scheme 'ftp'"),
        ("storage", {"target": "s3://Not_A_Bucket/x"}, "not a valid S3 bucket"),
        ("storage", {"target": "/tmp/v", "endpoint_url": "http://127.0.0.1:9000"}, "only applies"),
        ("storage", {"target": "/tmp/v", "max_bytes": 0}, "key 'max_bytes'"),
        ("storage", {"target": "/tmp/v", "public_url": "cdn.example.com"}, "key 'public_url'"),
        ("storage", {"target": "/tmp/v", "allow_private_hosts": "yes"}, "key 'allow_private_hosts'"),
        ("database", {"url": "sqlite:///x.db", "table": "events; drop table jobs"}, "key 'table'"),
        ("database", {"url": "mysql://db/x"}, "scheme 'mysql'"),
        ("database", {"url": "sqlite:///"}, "key 'url'"),
        ("log", {"verbose": True}, "unknown key 'verbose'"),
        ("storage", {}, "key 'target' is required"),
        ("forward", {"url": "https://x.example", "secret": SECRET, "transport": "x"}, "key 'transport'"),
    ],
)
def test_bad_values_name_the_handler_and_key_and_never_echo_secrets(
    type_name: str, keys: dict[str, Any], says: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        build_one(type_name, **keys)
    message = str(caught.value)
    assert message.startswith("handler 'h': ")
    assert says in message
    for secret in ("hunter2", "s3cr3t", "%%%notbase64"):
        assert secret not in message


def test_signature_matches_the_standard_webhooks_vector() -> None:
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected
    headers = signed_headers(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert headers["webhook-signature"] == expected
    assert headers["webhook-id"] == "msg_p5jXN8AQM9LWM0D4loKWxJek"
    assert headers["webhook-timestamp"] == "1614265330"
    assert sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265331, body) != expected


NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def test_retry_after_reads_seconds_and_dates() -> None:
    now = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("2", now) == 2
    assert parse_retry_after(" 1.5 ", now) == 1.5
    assert parse_retry_after("Sun, 01 Mar 2026 12:00:30 GMT", now) == 30
    assert parse_retry_after("Sun, 01 Mar 2026 11:00:00 GMT", now) == 0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


@pytest.mark.parametrize(
    ("status", "headers", "error"),
    [
        (200, {}, None),
        (204, {}, None),
        (429, {"retry-after": "2"}, RetryLater),
        (429, {}, DeliveryFailed),
        (500, {}, DeliveryFailed),
        (503, {}, DeliveryFailed),
        (408, {}, DeliveryFailed),
        (400, {}, PermanentError),
        (403, {}, PermanentError),
        (404, {}, PermanentError),
        (410, {}, PermanentError),
    ],
)
def test_status_mapping(status: int, headers: dict[str, str], error: type[Exception] | None) -> None:
    if error is None:
        check_status(status, headers, "ok", "slack", now=NOW)
        return
    with pytest.raises(error) as caught:
        check_status(status, headers, "no_service\n", "slack", now=NOW)
    assert not isinstance(caught.value, PermanentError) or error is PermanentError
    assert f"slack answered {status}: no_service" in str(caught.value)
    if error is RetryLater:
        assert isinstance(caught.value, RetryLater)
        assert caught.value.delay == 2


def test_storage_targets_and_extensions(tmp_path: Path) -> None:
    assert parse_target("s3://videos/kling/out/").prefix == "kling/out/"
    assert parse_target("s3://videos").prefix == ""
    assert parse_target(f"file://{tmp_path}").folder == tmp_path.resolve()
    assert parse_target(str(tmp_path)).folder == tmp_path.resolve()
    assert extension("https://cdn.x/a/video.MOV?sig=1", "video/mp4") == "mov"
    assert extension("https://cdn.x/a/video", "video/webm; codecs=vp9") == "webm"
    assert extension("https://cdn.x/a/video", "application/octet-stream") == "mp4"
    assert extension("https://cdn.x/a/video.tar.gz-is-not-an-ext!", None) == "mp4"


def test_event_row_and_upsert_sql() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    job = Job(
        id="job_1", provider="apiframe", status=JobStatus.SUCCEEDED, request={"prompt": "fox"}, created_at=now
    )
    event = make_event(job, "evt_1", now=now)
    assert event_row(event, datetime.now(UTC)).values["stored_urls"] is None
    event["reports"] = {"copy": {"stored_urls": ["s3://b/job_1/0.mp4"]}, "db": None}
    row = event_row(event, datetime.now(UTC)).values
    assert tuple(row) == COLUMNS
    assert row["stored_urls"] == ["s3://b/job_1/0.mp4"]
    assert "reports" not in row["event"]
    assert (row["event_id"], row["job_id"], row["prompt"]) == ("evt_1", "job_1", "fox")
    sql = upsert_sql("generation_events", "?")
    assert "ON CONFLICT (event_id) DO UPDATE" in sql
    assert 'stored_urls = COALESCE(excluded.stored_urls, "generation_events".stored_urls)' in sql


@pytest.mark.anyio
async def test_log_writes_one_line_with_the_event_fields() -> None:
    job = Job(
        id="job_log",
        provider="runbase",
        status=JobStatus.FAILED,
        request={"prompt": "p"},
        error=JobError("timeout", "no final status"),
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    handler = LogHandler()
    with structlog.testing.capture_logs() as lines:
        assert await handler.handle(make_event(job, "evt_log", now=job.created_at)) is None
    await handler.aclose()
    assert lines == [
        {
            "event": "job_finished",
            "log_level": "info",
            "event_id": "evt_log",
            "type": "job.failed",
            "job_id": "job_log",
            "provider": "runbase",
            "status": "failed",
            "output_urls": [],
            "error_code": "timeout",
        }
    ]
