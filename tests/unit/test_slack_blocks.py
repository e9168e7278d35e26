"""The Slack message builder: what a person sees, and Slack's limits whatever the input."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from handlers.slack import build_message, duration_text, mrkdwn_cut
from receiver.events import Job, JobError, JobStatus, make_event

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def event(status: JobStatus = JobStatus.SUCCEEDED, **changes: Any) -> dict[str, Any]:
    request = {
        "prompt": "A red fox runs through fresh snow at dawn",
        "mode": "pro",
        "aspect_ratio": "16:9",
        "duration": 10,
        "start_image": None,
        "end_image": None,
        "generate_audio": False,
        "negative_prompt": None,
        "multi_prompt": None,
    }
    request.update(changes.pop("request", {}))
    job = Job(
        id="job_abc",
        provider="runbase",
        status=status,
        request=request,
        provider_job_id="run_42",
        output_urls=["https://cdn.runbase.net/out/video.mp4"] if status is JobStatus.SUCCEEDED else [],
        created_at=START,
        completed_at=START + timedelta(minutes=2, seconds=31),
        completed_via="poll",
        **changes,
    )
    return make_event(job, "evt_1", now=START)


def texts(payload: dict[str, Any]) -> str:
    """All the text a reader sees in the blocks, joined."""
    out: list[str] = []
    for block in payload["blocks"]:
        if "text" in block:
            out.append(block["text"]["text"])
        out.extend(f["text"] for f in block.get("fields", []))
        out.extend(
            e["text"] if isinstance(e["text"], str) else e["text"]["text"] for e in block.get("elements", [])
        )
    return "\n".join(out)


def check_limits(payload: dict[str, Any]) -> None:
    assert payload["text"].strip()
    blocks = payload["blocks"]
    assert 1 <= len(blocks) <= 50
    for block in blocks:
        assert block["type"] in {"header", "section", "actions", "context", "divider"}
        if block["type"] == "header":
            assert block["text"]["type"] == "plain_text"
            assert len(block["text"]["text"]) <= 150
        if block["type"] == "section":
            assert "text" in block or "fields" in block
            if "text" in block:
                assert 0 < len(block["text"]["text"]) <= 3000
            assert len(block.get("fields", [])) <= 10
            assert all(0 < len(f["text"]) <= 2000 for f in block.get("fields", []))
        if block["type"] == "actions":
            assert 1 <= len(block["elements"]) <= 25
            for button in block["elements"]:
                assert len(button["text"]["text"]) <= 75
                assert len(button["url"]) <= 3000
        if block["type"] == "context":
            assert 1 <= len(block["elements"]) <= 10


def test_success_reads_at_a_glance() -> None:
    payload = build_message(event())
    check_limits(payload)
    header = payload["blocks"][0]
    assert header["type"] == "header"
    assert header["text"]["text"].startswith(":white_check_mark: Video ready")
    seen = texts(payload)
    for fact in ("A red fox runs", "runbase", "pro", "10 s", "16:9", "2 min 31 s", "job_abc", "run_42"):
        assert fact in seen
    (actions,) = [b for b in payload["blocks"] if b["type"] == "actions"]
    assert actions["elements"][0]["url"] == "https://cdn.runbase.net/out/video.mp4"
    assert "Video ready (runbase)" in payload["text"]
    assert "https://cdn.runbase.net/out/video.mp4" in payload["text"]


def test_failure_shows_the_error_and_no_link() -> None:
    payload = build_message(
        event(JobStatus.FAILED, error=JobError("content_policy", "The prompt was refused <by policy> & more"))
    )
    check_limits(payload)
    assert payload["blocks"][0]["text"]["text"].startswith(":x: Video failed")
    seen = texts(payload)
    assert "content_policy" in seen
    assert "The prompt was refused &lt;by policy&gt; &amp; more" in seen
    assert not [b for b in payload["blocks"] if b["type"] == "actions"]
    assert "Video failed (runbase, content_policy)" in payload["text"]


def test_canceled_and_timed_out_read_differently() -> None:
    canceled = build_message(event(JobStatus.CANCELED, error=JobError("canceled", "canceled by user")))
    assert canceled["blocks"][0]["text"]["text"].startswith(":no_entry_sign: Video canceled")
    timed_out = build_message(event(JobStatus.FAILED, error=JobError("timeout", "no final status in 3600 s")))
    assert "timeout" in texts(timed_out)


def test_a_stored_web_copy_beats_the_provider_url() -> None:
    evt = event()
    evt["reports"] = {"bucket": {"stored_urls": ["https://media.example.com/v/job_abc/0.mp4"]}}
    (actions,) = [b for b in build_message(evt)["blocks"] if b["type"] == "actions"]
    assert [e["url"] for e in actions["elements"]] == ["https://media.example.com/v/job_abc/0.mp4"]


def test_an_s3_copy_is_named_and_the_provider_url_stays_the_link() -> None:
    evt = event()
    evt["reports"] = {"bucket": {"stored_urls": ["s3://videos/job_abc/0.mp4"], "event_url": "s3://x"}}
    payload = build_message(evt)
    (actions,) = [b for b in payload["blocks"] if b["type"] == "actions"]
    assert actions["elements"][0]["url"] == "https://cdn.runbase.net/out/video.mp4"
    assert "s3://videos/job_abc/0.mp4" in texts(payload)


def test_huge_inputs_stay_inside_slack_limits() -> None:
    many = [f"https://cdn.example.com/{n}/" + "x" * 3000 + ".mp4" for n in range(3)] + [
        f"https://cdn.example.com/{n}.mp4" for n in range(30)
    ]
    evt = event(
        request={"prompt": "<&>" * 4000, "mode": "m" * 5000, "aspect_ratio": "a" * 5000},
        model="k" * 400,
        metadata={"k": "v"},
    )
    evt["job"]["output_urls"] = many
    payload = build_message(evt)
    check_limits(payload)
    prompt_block = payload["blocks"][1]["text"]["text"]
    assert prompt_block.endswith("…")
    assert re.fullmatch(r"\*Prompt\*\n(?:&lt;|&amp;|&gt;)+…", prompt_block), "an entity was cut in half"
    failed = event(JobStatus.FAILED, error=JobError("x" * 500, "y" * 10_000))
    check_limits(build_message(failed))


def test_missing_optional_fields_are_left_out() -> None:
    evt = event(request={"mode": None, "aspect_ratio": None, "duration": None, "prompt": ""})
    evt["job"]["completed_at"] = None
    payload = build_message(evt)
    check_limits(payload)
    seen = texts(payload)
    assert "*Provider*" in seen
    for label in ("*Mode*", "*Duration*", "*Aspect ratio*", "*Time taken*", "*Prompt*"):
        assert label not in seen


def test_overrides_are_passed_only_when_set() -> None:
    assert "channel" not in build_message(event())
    payload = build_message(event(), channel="#videos", username="Kling", icon_emoji=":movie_camera:")
    assert (payload["channel"], payload["username"], payload["icon_emoji"]) == (
        "#videos",
        "Kling",
        ":movie_camera:",
    )


def test_small_helpers() -> None:
    assert duration_text(42) == "42 s"
    assert duration_text(151) == "2 min 31 s"
    assert duration_text(3 * 3600 + 60 * 5) == "3 h 5 min"
    assert mrkdwn_cut("a&b", 10) == "a&amp;b"
    cut = mrkdwn_cut("aaaa&b", 7)
    assert cut == "aaaa…"
    assert len(cut) <= 7
