"""The dashboard's pages over real HTTP (no browser): the session, the submit form's rules, filters and
paging, dead letters, the health page, the event stream. The browser test is tests/e2e/test_dashboard.py."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support.inbox import Inbox, running_inbox
from tests.support.stack import ADMIN, FORWARD_SECRET, Stack, receiver_stack


@contextmanager
def signed_in(stack: Stack) -> Iterator[tuple[httpx.Client, str]]:
    """A client holding a session cookie, and the CSRF token its forms carry."""
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        client.post("/ui/login", data={"csrf": csrf_of(client.get("/ui/login").text), "token": ADMIN})
        page = client.get("/ui/submit")
        assert page.status_code == 200, page.text
        yield client, csrf_of(page.text)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, html
    return found.group(1)


def field_error(html: str, name: str) -> str | None:
    found = re.search(rf'id="{name}-error">([^<]*)<', html)
    return found.group(1) if found else None


def test_session_cookie_is_signed_httponly_strict_and_login_needs_its_csrf(tmp_path: Path, sink) -> None:
    with receiver_stack(tmp_path, sink.url) as stack, httpx.Client(base_url=stack.url) as client:
        form = client.get("/ui/login")
        cookie = form.headers["set-cookie"].lower()
        no_csrf = client.post("/ui/login", data={"token": ADMIN})
        forged = httpx.get(f"{stack.url}/ui/jobs", cookies={"receiver_ui": "e30.forged.sig"})
        stale = client.post("/ui/login", data={"csrf": csrf_of(form.text), "token": ADMIN})
        ok = client.post("/ui/login", data={"csrf": csrf_of(stale.text), "token": ADMIN})
        jobs = client.get("/ui/jobs")

    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    assert "path=/ui" in cookie
    assert no_csrf.status_code == 403
    assert stale.status_code == 403  # a refused form gets a new token: the old one is spent
    assert forged.status_code == 303
    assert forged.headers["location"] == "/ui/login"
    assert ok.status_code == 303
    assert ok.headers["location"] == "/ui/jobs"
    assert jobs.status_code == 200
    assert "<h1>Jobs</h1>" in jobs.text


def test_submit_form_keeps_post_jobs_rules_with_errors_by_the_field(tmp_path: Path, sink) -> None:
    with receiver_stack(tmp_path, sink.url) as stack, signed_in(stack) as (client, csrf):
        bad = client.post(
            "/ui/submit",
            data={
                "csrf": csrf,
                "provider": "runbase",
                "prompt": " ",
                "duration": "forty",
                "start_image": "x",
            },
        )
        refused = client.post(
            "/ui/submit",
            data={"csrf": csrf, "provider": "runbase", "prompt": "a cat", "negative_prompt": "blur"},
        )
        no_csrf = client.post("/ui/submit", data={"provider": "runbase", "prompt": "a cat"})
        listed = stack.admin.get("/jobs").json()["jobs"]
        made = client.post("/ui/submit", data={"csrf": csrf, "provider": "runbase", "prompt": "a cat"})

    assert bad.status_code == 422
    assert field_error(bad.text, "prompt") == "required, a non-empty string"
    assert field_error(bad.text, "duration") == "whole seconds from 3 to 15"
    assert field_error(bad.text, "start_image") == "an http(s) URL"
    assert 'id="duration" name="duration" inputmode="numeric" value="forty"' in bad.text  # kept to fix
    assert refused.status_code == 422
    assert field_error(refused.text, "negative_prompt") is not None
    assert no_csrf.status_code == 403
    assert listed == []  # nothing refused was recorded
    assert made.status_code == 303
    assert made.headers["location"].startswith("/ui/jobs/job_")


def test_jobs_page_filters_and_pages(tmp_path: Path, sink) -> None:
    with receiver_stack(tmp_path, sink.url) as stack:
        for _ in range(26):
            stack.submit("runbase")
        apiframe = stack.submit("apiframe")["id"]
        with signed_in(stack) as (client, _):
            first = client.get("/ui/jobs").text
            second = client.get("/ui/jobs?page=1").text
            only_apiframe = client.get("/ui/jobs?provider=apiframe").text
            none_failed = client.get("/ui/jobs?status=failed").text

    rows = re.compile(r'<tr id="job-(job_\w+)"')
    assert len(rows.findall(first)) == 25
    assert 'rel="next"' in first
    assert len(rows.findall(second)) == 2
    assert 'rel="prev"' in second
    assert 'rel="next"' not in second
    assert set(rows.findall(first)).isdisjoint(rows.findall(second))
    assert rows.findall(only_apiframe) == [apiframe]
    assert rows.findall(none_failed) == []
    assert "No jobs match these filters." in none_failed


def test_dead_letters_replay_and_health(tmp_path: Path, sink) -> None:
    with receiver_stack(tmp_path, sink.url) as stack:
        sink.answers.append(410)
        job_id = stack.submit("runbase")["id"]
        stack.run_until(lambda: stack.settled(job_id, "dead"))
        with signed_in(stack) as (client, csrf):
            dead = client.get("/ui/dead").text
            health = client.get("/ui/health").text
            replayed = client.post("/ui/dead/replay", data={"csrf": csrf})
            stack.run_until(lambda: stack.settled(job_id))
            after = client.get("/ui/health").text

    assert f'id="dead-{job_id}-forward"' in dead
    assert "answered 410" in dead
    assert replayed.status_code == 303
    assert "1+replayed" in replayed.headers["location"]
    assert re.search(r"Dead letters</dt><dd><a href=\"/ui/dead\">1<", health)
    assert re.search(r"<td>forward</td><td>1</td><td>0</td><td>0</td>\s*<td>100 %</td>", after)
    assert re.search(r"\d+ of 20 requests in the last 10 s", after)


@contextmanager
def budget_gone_dead(tmp_path: Path, sink: Inbox) -> Iterator[tuple[Stack, Inbox]]:
    """A receiver whose `alerts` handler's target answered the 80 % `budget` event 410 (gone: no
    retry), so it went dead, and takes whatever comes next."""
    with running_inbox() as alerts:
        alerts.answers.append(410)
        forward = {"name": "forward", "type": "forward", "url": sink.url, "secret": FORWARD_SECRET}
        alert = {**forward, "name": "alerts", "url": alerts.url, "events": ["budget"]}
        options = {"handlers": [forward, alert], "daily_budgets": {"apiframe": 10.0}}
        with receiver_stack(tmp_path, sink.url, **options) as stack:
            job_id = stack.submit("apiframe")["id"]
            stack.run_until(lambda: stack.settled(job_id) and len(alerts.posts) >= 2)
            yield stack, alerts


def test_a_budget_event_gone_dead_is_a_dead_letter_and_replay_all_sends_it_again(
    tmp_path: Path, sink
) -> None:
    """The budget handler's target answers the 80 % event 410 (no retry): the dead letters page lists
    it beside the jobs' and the health page counts it; "Replay all" makes it due, and the worker
    sends it again."""
    with budget_gone_dead(tmp_path, sink) as (stack, alerts), signed_in(stack) as (client, csrf):
        dead = client.get("/ui/dead").text
        health = client.get("/ui/health").text
        replayed = client.post("/ui/dead/replay", data={"csrf": csrf})
        stack.run_until(lambda: len(alerts.posts) >= 3)
        after = client.get("/ui/dead").text

    day = stack.clock().date().isoformat()
    assert f'id="dead-budget-apiframe-{day}-80-alerts"' in dead
    assert "Replay all 1" in dead
    assert "answered 410" in dead
    assert re.search(r"Dead letters</dt><dd><a href=\"/ui/dead\">1<", health)
    assert "1+replayed" in replayed.headers["location"]
    assert [p.body for p in alerts.posts[2:]] == [alerts.posts[0].body]  # the same event, again
    assert 'id="no-dead"' in after


def test_a_budget_event_gone_dead_is_replayed_from_its_own_row(tmp_path: Path, sink) -> None:
    """The Replay button of a dead budget event's row sends that event, to that handler, again."""
    with budget_gone_dead(tmp_path, sink) as (stack, alerts):
        event_id = json.loads(alerts.posts[0].body)["id"]
        with signed_in(stack) as (client, csrf):
            dead = client.get("/ui/dead").text
            fields = {"csrf": csrf, "event_id": event_id, "handler": "alerts"}
            replayed = client.post("/ui/dead/replay", data=fields)
            stack.run_until(lambda: len(alerts.posts) >= 3)
            unknown = client.post("/ui/dead/replay", data={**fields, "event_id": "evt_0"})
            after = client.get("/ui/dead").text

    assert f'name="event_id" value="{event_id}"' in dead
    assert 'aria-label="Replay alerts for apiframe' in dead
    assert "1+replayed" in replayed.headers["location"]
    assert [p.body for p in alerts.posts[2:]] == [alerts.posts[0].body]  # the same event, again
    assert "no+budget+event" in unknown.headers["location"]
    assert 'id="no-dead"' in after


def test_event_stream_sends_a_change(tmp_path: Path, sink) -> None:
    with receiver_stack(tmp_path, sink.url) as stack, signed_in(stack) as (client, _):
        with client.stream("GET", "/ui/events") as events:
            lines = events.iter_lines()
            assert next(lines) == "retry: 1000"
            stack.submit("runbase")
            data = next(line for line in lines if line.startswith("data:"))
        anonymous = httpx.get(f"{stack.url}/ui/events")

    assert events.headers["content-type"].startswith("text/event-stream")
    assert int(data.removeprefix("data: ")) >= 1
    assert anonymous.status_code == 303


def test_job_page_shows_its_cost_and_health_today_spend_against_the_budget(tmp_path: Path, sink) -> None:
    with receiver_stack(tmp_path, sink.url, daily_budgets={"runbase": 10.0}) as stack:
        job_id = stack.submit("runbase")["id"]
        stack.run_until(lambda: stack.settled(job_id))
        cost = stack.job(job_id)["cost"]
        with signed_in(stack) as (client, _):
            job = client.get(f"/ui/jobs/{job_id}").text
            health = client.get("/ui/health").text

    assert cost["unit"] == "usd"
    assert cost["amount"] > 0
    assert f'<dd id="job-cost">{cost["amount"]:g} usd</dd>' in job
    spend = re.search(r'<p id="spend-runbase">([^<]*)', health)
    assert spend is not None, health
    assert f"Runbase: {cost['amount']:g} usd of a daily budget of 10" in spend.group(1)
    assert f'max="10.0" high="8.0" value="{cost["amount"]}"' in health
    assert 'id="spend-apiframe"' not in health  # no budget, nothing spent today
