"""Costs and the daily budget against the emulators over real HTTP: what each job cost is what its
provider charged (Apiframe's `creditCost`, refunded on failure; Runbase's `costUsd`), and a provider's
daily budget refuses the submit that would cross it and announces 80% and 100% once each."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from receiver.costs import budget_event, day_start
from receiver.events import Job, JobStatus, new_job_id
from receiver.service import Receiver
from receiver.store import open_store
from tests.integration.test_unknown_submits import events
from tests.support.inbox import Inbox, running_inbox
from tests.support.stack import APIFRAME_KEY, FORWARD_SECRET, SECRET, Stack, receiver_stack
from tests.support.waiting import wait_until

FAILING = {"failure_rate": 0.4, "seed": 7}


def handlers(sink: Inbox, *, budget: bool = False) -> list[dict[str, Any]]:
    """The sink hears of jobs; with `budget`, a second forward to it asks only for `budget` events."""
    tables = [
        {"name": "forward", "type": "forward", "url": sink.url, "secret": FORWARD_SECRET, "retry_base": 0}
    ]
    if budget:
        tables.append({**tables[0], "name": "alerts", "events": ["budget"]})
    return tables


def run_cli(stack: Stack, *args: str, **env: str) -> tuple[int, str, str]:
    """`receiver ARGS` in its own process, on the stack's store."""
    variables = {
        k: v for k, v in os.environ.items() if not k.startswith(("RECEIVER_", "APIFRAME_", "RUNBASE_"))
    }
    variables.update(RECEIVER_DATABASE_URL=stack.receiver.settings.database_url, **env)
    done = subprocess.run(
        [sys.executable, "-m", "receiver", *args],
        env=variables,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def test_the_costs_of_a_mixed_run_sum_to_what_the_emulators_charged_refunds_included(
    tmp_path: Path,
    sink: Inbox,
    store_url: str,
) -> None:
    options: dict[str, Any] = {"apiframe": FAILING, "runbase": FAILING, "handlers": handlers(sink)}
    with receiver_stack(tmp_path, sink.url, database_url=store_url, **options) as stack:
        submitted = [
            stack.submit(provider, metadata={"team": f"t{n % 3}"})
            for n in range(10)
            for provider in ("apiframe", "runbase")
        ]
        done = [stack.run_until(lambda j=job: stack.settled(j["id"])) for job in submitted]
        metrics = stack.admin.get("/metrics").text
        code, out, err = run_cli(stack, "costs", "--json")
        by_team = run_cli(stack, "costs", "--by", "metadata", "team", "--json")
        table = run_cli(stack, "costs")
        bad = run_cli(stack, "costs", "--by", "prompt")
        apiframe_charged, runbase_charged = stack.apiframe.charged, stack.runbase.charged

    failed = {
        p: [j for j in done if j["provider"] == p and j["status"] == "failed"]
        for p in ("apiframe", "runbase")
    }
    assert failed["apiframe"], "the seed makes Apiframe jobs fail"
    assert failed["runbase"], "the seed makes Runbase jobs fail"
    assert all(j["cost"]["amount"] == 0 for j in failed["apiframe"])  # refunded
    assert all(j["cost"]["amount"] == 0.5 for j in failed["runbase"])  # no refund documented
    assert stack.apiframe.credits == 1000 - apiframe_charged
    assert apiframe_charged == 10 * (10 - len(failed["apiframe"]))

    def total(provider: str) -> float:
        return sum(j["cost"]["amount"] for j in done if j["provider"] == provider)

    assert total("apiframe") == apiframe_charged
    assert total("runbase") == runbase_charged == 5.0
    assert {(j["provider"], j["cost"]["unit"], j["cost"]["source"]) for j in done} == {
        ("apiframe", "credits", "provider"),
        ("runbase", "usd", "provider"),
    }
    sent = {e["job"]["id"]: e["job"]["cost"] for e in events(sink)}
    assert sent == {j["id"]: j["cost"] for j in done}

    assert (code, err) == (0, "")
    summed = {(r["group"], r["unit"]): (r["jobs"], r["total"]) for r in json.loads(out)["costs"]}
    assert summed == {("apiframe", "credits"): (10, apiframe_charged), ("runbase", "usd"): (10, 5.0)}
    teams = json.loads(by_team[1])["costs"]
    assert sum(r["total"] for r in teams if r["unit"] == "usd") == 5.0
    assert {r["group"] for r in teams} == {"t0", "t1", "t2"}
    assert table[0] == 0
    assert "runbase" in table[1]
    assert bad[0] == 2
    assert bad[2].count("\n") == 1
    assert "--by" in bad[2]
    assert f'receiver_cost_today{{provider="apiframe",unit="credits"}} {float(apiframe_charged)}' in metrics
    assert 'receiver_cost_today{provider="runbase",unit="usd"} 5.0' in metrics


def test_the_daily_budget_refuses_the_job_that_would_cross_it_and_announces_80_and_100_once(
    tmp_path: Path,
    sink: Inbox,
    store_url: str,
) -> None:
    """10 credits a job, a budget of 50: the 4th job reaches 80%, the 5th 100%, the 6th is refused
    before anything is sent to Apiframe. A second receiver on the same store announces nothing again."""
    options: dict[str, Any] = {"handlers": handlers(sink, budget=True), "daily_budgets": {"apiframe": 50.0}}
    with receiver_stack(tmp_path, sink.url, database_url=store_url, **options) as stack:
        for _ in range(5):
            job = stack.submit("apiframe")
            stack.run_until(lambda j=job: stack.settled(j["id"]))
        sends = len(stack.apiframe.jobs)
        refused = stack.admin.post("/jobs", json={"provider": "apiframe", "prompt": "one more fox"})
        runbase_still = stack.submit("runbase")  # another provider's budget is its own
        other = Receiver.from_settings(stack.receiver.settings, clock=stack.clock)

        async def announce_again() -> None:
            await other.open()
            try:
                await other.announce_budget("apiframe")
            finally:
                await other.close()

        asyncio.run(announce_again())  # on this thread, apart from the stack's receiver
        sink.wait_for(5 + 2)  # the jobs' events, and the budget's, sent in tasks of their own
        alerts = [e for e in events(sink) if e["type"] == "budget"]
        cli_code, _, cli_err = run_cli(
            stack,
            *("submit", "--provider", "apiframe", "--prompt", "a fox from the shell"),
            APIFRAME_API_KEY=APIFRAME_KEY,
            APIFRAME_BASE_URL=stack.apiframe_url,
            APIFRAME_DAILY_BUDGET="50",
            RECEIVER_SECRET=SECRET,
        )
        after = len(stack.apiframe.jobs)

    assert sends == 5
    assert refused.status_code == 402
    assert refused.json()["code"] == "daily_budget_exceeded"
    assert "APIFRAME_DAILY_BUDGET" in refused.json()["error"]
    assert after == sends  # neither refused submit reached Apiframe
    assert runbase_still["provider"] == "runbase"
    assert [(a["budget"]["level"], a["budget"]["spent"]) for a in alerts] == [(80, 40.0), (100, 50.0)]
    assert {(a["budget"]["provider"], a["budget"]["limit"], a["budget"]["unit"]) for a in alerts} == {
        ("apiframe", 50.0, "credits")
    }
    assert cli_code == 1
    assert cli_err.count("\n") == 1
    assert "daily budget exceeded" in cli_err


def test_the_webhook_that_crosses_the_budget_is_answered_while_the_budget_handler_still_works(
    tmp_path: Path, sink: Inbox
) -> None:
    """One job's 10 credits reach a budget of 10: its completed webhook takes the provider past 80 and
    100 %. The webhook is answered (Apiframe marks it delivered) while the `budget` handler's target
    still holds the first event; both then arrive, once each, and the job's own delivery is as ever."""
    held = threading.Event()
    options: dict[str, Any] = {"daily_budgets": {"apiframe": 10.0}}
    with running_inbox(hold=held) as alerts:
        forward = handlers(sink)[0]
        alert = {"name": "alerts", "url": alerts.url, "events": ["budget"], "timeout": 60}
        tables = [forward, {**forward, **alert}]
        with receiver_stack(tmp_path, sink.url, handlers=tables, **options) as stack:
            job = stack.submit("apiframe")
            stack.run_until(lambda: stack.settled(job["id"]))
            alerts.wait_for(1)  # the 80 % event, held by its target
            provider_job = stack.apiframe.jobs[stack.job(job["id"])["provider_job_id"]]
            wait_until(lambda: provider_job.webhook_status == "DELIVERED")  # still held
            held.set()
            posts = alerts.wait_for(2)

    assert [json.loads(post.body)["budget"]["level"] for post in posts] == [80, 100]
    assert [e["type"] for e in events(sink)] == ["job.succeeded"]


def test_a_budget_handler_that_fails_gets_the_event_again_from_the_worker(
    tmp_path: Path, sink: Inbox
) -> None:
    """The budget handler's target answers the first `budget` event with a 503: the worker sends it
    again (at the handler's retry), and each level arrives delivered once."""
    options: dict[str, Any] = {"daily_budgets": {"apiframe": 10.0}}
    with running_inbox() as alerts:
        alerts.answers.append(503)
        forward = handlers(sink)[0]
        tables = [forward, {**forward, "name": "alerts", "url": alerts.url, "events": ["budget"]}]
        with receiver_stack(tmp_path, sink.url, handlers=tables, **options) as stack:
            job = stack.submit("apiframe")
            stack.run_until(lambda: stack.settled(job["id"]) and len(alerts.posts) >= 3)
            stack.advance(60)
            stack.run_until(lambda: True)  # a round after the retry: nothing more is owed

    levels = [json.loads(post.body)["budget"]["level"] for post in alerts.posts]
    assert levels[0] == 80  # answered 503; the worker sent it again, before or after the 100 % one
    assert sorted(levels) == [80, 80, 100]
    assert len({json.loads(post.body)["id"] for post in alerts.posts}) == 2  # the same event, twice


@contextmanager
def budget_gone_dead(tmp_path: Path, sink: Inbox) -> Iterator[tuple[Stack, Inbox]]:
    """A receiver whose `alerts` handler's target answered the 80 % `budget` event 410 (gone: no retry),
    so it went dead, and takes whatever comes next."""
    options: dict[str, Any] = {"daily_budgets": {"apiframe": 10.0}}
    with running_inbox() as alerts:
        alerts.answers.extend([410, 200])
        forward = handlers(sink)[0]
        tables = [forward, {**forward, "name": "alerts", "url": alerts.url, "events": ["budget"]}]
        with receiver_stack(tmp_path, sink.url, handlers=tables, **options) as stack:
            job = stack.submit("apiframe")
            stack.run_until(lambda: stack.settled(job["id"]) and len(alerts.posts) >= 2)
            yield stack, alerts


def test_a_budget_event_gone_dead_is_listed_by_receiver_dead(tmp_path: Path, sink: Inbox) -> None:
    """The budget handler's target answers 410 (gone: no retry): `receiver dead` lists that level with
    the jobs' dead letters, in its table and in its JSON."""
    with budget_gone_dead(tmp_path, sink) as (stack, alerts):
        code, out, err = run_cli(stack, "dead", "--json")
        text = run_cli(stack, "dead")

    day = json.loads(alerts.posts[0].body)["budget"]["day"]
    assert (code, err) == (0, "")
    assert json.loads(out)["dead"] == []
    (dead,) = json.loads(out)["dead_budget_events"]
    assert {k: dead[k] for k in ("provider", "day", "level", "handler", "attempts")} == {
        "provider": "apiframe",
        "day": day,
        "level": 80,
        "handler": "alerts",
        "attempts": 1,
    }
    assert "410" in dead["last_error"]
    assert text[0] == 0
    assert f"apiframe {day} 80%" in text[1]


def test_a_budget_event_gone_dead_is_sent_again_by_receiver_replay_with_its_id(
    tmp_path: Path, sink: Inbox
) -> None:
    """`receiver dead --json` names the dead budget event by its id; `receiver replay` with that id
    sends the same event to that handler again, and an id no level was noted with is one line and 1."""
    with budget_gone_dead(tmp_path, sink) as (stack, alerts):
        (dead,) = json.loads(run_cli(stack, "dead", "--json")[1])["dead_budget_events"]
        config = tmp_path / "alerts.toml"  # the shell's receiver knows the handler too
        config.write_text(
            f'[[handlers]]\nname = "alerts"\ntype = "forward"\nurl = "{alerts.url}"\n'
            f'secret = "{FORWARD_SECRET}"\nevents = ["budget"]\n'
        )
        code, out, err = run_cli(stack, "replay", dead["event_id"], RECEIVER_CONFIG=str(config))
        listed_after = json.loads(run_cli(stack, "dead", "--json")[1])["dead_budget_events"]
        unknown = run_cli(stack, "replay", "evt_000000000000000000000000")

    first = json.loads(alerts.posts[0].body)
    assert (dead["event_id"], dead["level"]) == (first["id"], 80)
    assert code == 0
    assert '"event": "budget.delivered"' in err
    assert json.loads(out)["replayed"] == 1
    assert json.loads(out)["event_id"] == first["id"]
    assert [post.body for post in alerts.posts[2:]] == [alerts.posts[0].body]  # the same event, again
    assert listed_after == []
    assert unknown[:2] == (2, "")
    assert unknown[2] == (
        "receiver: error: no budget event 'evt_000000000000000000000000'"
        " (a job's event is replayed by the job's id)\n"
    )


def test_a_level_noted_by_a_process_that_stopped_before_sending_it_is_sent_by_the_worker(
    tmp_path: Path, sink: Inbox, store_url: str
) -> None:
    """Another process noted today's 80 % for Apiframe and stopped before its handler had the event: once
    its lease is over, this receiver's worker sends it, once; the level is not noted or sent again."""
    options: dict[str, Any] = {"daily_budgets": {"apiframe": 50.0}, "database_url": store_url}
    with running_inbox() as alerts:
        forward = handlers(sink)[0]
        tables = [forward, {**forward, "name": "alerts", "url": alerts.url, "events": ["budget"]}]
        with receiver_stack(tmp_path, sink.url, handlers=tables, **options) as stack:
            now = stack.clock()
            day = day_start(now).date().isoformat()
            event = budget_event("apiframe", day, 80, 40.0, 50.0, now - timedelta(seconds=60))

            async def note_and_stop() -> bool:
                store = open_store(store_url)
                await store.open()
                try:
                    lease = now - timedelta(seconds=30)  # the lease its process took has run out
                    return await store.budget_alert(event, ["alerts"], now - timedelta(seconds=60), lease)
                finally:
                    await store.close()

            assert asyncio.run(note_and_stop())
            stack.run_until(lambda: alerts.posts)
            stack.advance(60)
            stack.run_until(lambda: True)

    (post,) = alerts.posts
    assert json.loads(post.body)["budget"] == event["budget"]
    assert json.loads(post.body)["id"] == event["id"]


def test_a_job_recorded_by_another_process_after_the_check_sends_the_submit_on_to_the_next_provider(
    tmp_path: Path, sink: Inbox, store_url: str
) -> None:
    """The budget is checked again where the job is recorded: another process's job that took the last
    room after this submit's first check sends it on to the next provider, and Apiframe never sees it."""
    options: dict[str, Any] = {"daily_budgets": {"apiframe": 20.0}, "cost_estimates": {"apiframe": 10.0}}
    with receiver_stack(tmp_path, sink.url, database_url=store_url, **options) as stack:
        store = stack.receiver.store
        create_job = store.create_job
        competitor = Job(id=new_job_id(), provider="apiframe", status=JobStatus.PENDING, request={},
                         created_at=stack.clock())  # fmt: skip

        async def after_another_process(job: Job, *args: Any, **kwargs: Any) -> bool:
            if job.provider == "apiframe":  # the other process records its job first, within budget
                assert await create_job(competitor, *args, **kwargs)
                assert await create_job(replace(competitor, id=new_job_id()), *args, **kwargs)
            return await create_job(job, *args, **kwargs)

        store.create_job = after_another_process  # type: ignore[method-assign]
        job = stack.admin.post("/jobs", json={"provider": ["apiframe", "runbase"], "prompt": "a fox"})

    assert job.status_code == 202, job.text
    assert job.json()["provider"] == "runbase"
    (skipped, sent) = job.json()["attempts"]
    assert skipped["provider"] == "apiframe"
    assert skipped["outcome"] == "not_sent"
    assert "daily budget exceeded" in skipped["answer"]
    assert sent["provider"] == "runbase"
    assert stack.apiframe.jobs == {}
