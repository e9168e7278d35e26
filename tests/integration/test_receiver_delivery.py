"""Dispatch: retries with backoff, dead letters, replay with the same event id, `after` ordering."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.stack import FORWARD_SECRET, receiver_stack, verify_forward


def forward(url: str, **keys: object) -> dict[str, object]:
    return {
        "name": "forward",
        "type": "forward",
        "url": url,
        "secret": FORWARD_SECRET,
        "retry_base": 0,
        **keys,
    }


def test_a_handler_that_fails_twice_then_succeeds_is_delivered_on_attempt_3(
    tmp_path: Path, sink, wait
) -> None:
    sink.answers = [500, 503]
    with receiver_stack(tmp_path, sink.url) as stack:
        job = stack.submit("apiframe")
        stack.clock.advance(0.3)
        posts = sink.wait_for(3)
        done = wait(lambda: stack.settled(job["id"]))

    assert done["deliveries"][0]["attempts"] == 3
    assert len({p.headers["webhook-id"] for p in posts}) == 1
    verify_forward(posts[2].headers, posts[2].body)


def test_permanent_failure_is_dead_at_once_and_replay_redelivers_the_same_event(
    tmp_path: Path, sink, wait
) -> None:
    sink.answers = [400]
    with receiver_stack(tmp_path, sink.url) as stack:
        job = stack.submit("runbase")
        first = stack.run_until(lambda: sink.posts)[0]
        dead = wait(lambda: stack.settled(job["id"], "dead"))
        replay = stack.admin.post(f"/jobs/{job['id']}/replay")
        second = sink.wait_for(2)[1]
        done = wait(lambda: stack.settled(job["id"]))

    assert dead["deliveries"][0]["attempts"] == 1
    assert "400" in dead["deliveries"][0]["last_error"]
    assert replay.status_code == 200
    assert replay.json()["replayed"] == 1
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert json.loads(first.body) == json.loads(second.body)
    assert done["deliveries"][0]["attempts"] == 1


def test_attempts_run_out_into_the_dead_letters(tmp_path: Path, sink, wait) -> None:
    sink.answers = [500, 500, 500]
    with receiver_stack(tmp_path, sink.url, handlers=[forward(sink.url, max_attempts=2)]) as stack:
        job = stack.submit("apiframe")
        stack.clock.advance(0.3)
        sink.wait_for(2)
        dead = wait(lambda: stack.settled(job["id"], "dead"))

    assert dead["deliveries"][0]["attempts"] == 2
    assert len(sink.posts) == 2


def test_events_filter_and_after_order_deliveries(tmp_path: Path, sink, wait) -> None:
    handlers = [
        forward(sink.url, name="second", after=["first"]),
        forward(sink.url, name="first"),
        forward(sink.url, name="failures-only", events=["job.failed"]),
        forward(sink.url, name="runbase-only", providers=["runbase"]),
        forward(sink.url, name="team-video", when={"team": "video"}),
    ]
    with receiver_stack(tmp_path, sink.url, handlers=handlers) as stack:
        job = stack.submit("apiframe", metadata={"team": "ads"})
        stack.clock.advance(0.3)
        posts = sink.wait_for(2)
        done = wait(lambda: stack.settled(job["id"]))

    assert sorted(d["handler"] for d in done["deliveries"]) == ["first", "second"]
    assert "reports" not in json.loads(posts[0].body)
    assert json.loads(posts[1].body)["reports"]["first"] == {"status_code": 200}
