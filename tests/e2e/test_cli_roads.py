"""`receiver serve` and `receiver submit` as a user runs them, in separate processes."""

from __future__ import annotations

import json
import signal

import pytest
from conftest import FORWARD_SECRET, World, wait_until
from standardwebhooks.webhooks import Webhook


def test_both_roads_through_serve_and_submit_each_delivered_once(world: World) -> None:
    world.serve()
    apiframe_job = json.loads(
        world.run("submit", "--provider", "apiframe", "--prompt", "fox", "--json").stdout
    )
    runbase_id = world.run(
        "submit", "--provider", "runbase", "--prompt", "lamp", "--meta", "team=ads"
    ).stdout.strip()
    posts = world.inbox.wait_for(2)
    wait_until(
        lambda: all(
            world.show(j)["deliveries"][0]["status"] == "delivered" for j in (apiframe_job["id"], runbase_id)
        )
    )
    events = {
        e["job"]["id"]: e for e in (Webhook(FORWARD_SECRET).verify(body, headers) for headers, body in posts)
    }

    assert apiframe_job["status"] == "submitted"
    assert events[apiframe_job["id"]]["job"]["completed_via"] == "webhook"
    assert events[runbase_id]["job"]["completed_via"] == "poll"
    assert events[runbase_id]["job"]["metadata"] == {"team": "ads"}
    assert len(world.inbox.posts) == 2
    for job_id in events:
        assert world.show(job_id)["deliveries"][0]["attempts"] == 1


def test_kill_9_after_the_webhook_is_acknowledged_then_restart_delivers_once(world: World) -> None:
    world.serve("--no-worker")
    job = json.loads(world.run("submit", "--provider", "apiframe", "--prompt", "fox", "--json").stdout)
    wait_until(
        lambda: any(
            w.get("event") == "completed" and w.get("status_code") == 200
            for w in world.apiframe.webhooks_sent
        )
    )
    acknowledged = world.show(job["id"])
    world.kill(world.procs[0])
    world.serve()
    posts = world.inbox.wait_for(1)
    done = wait_until(lambda: (j := world.show(job["id"]))["deliveries"][0]["status"] == "delivered" and j)

    assert acknowledged["status"] == "succeeded"
    assert acknowledged["deliveries"][0]["status"] == "pending"
    assert done["deliveries"][0]["attempts"] == 1
    assert len(posts) == 1
    assert len(world.inbox.posts) == 1


def test_dead_delivery_is_listed_and_cli_replay_sends_the_same_event_id(world: World) -> None:
    world.inbox.answers = [410]
    world.serve()
    job_id = world.run("submit", "--provider", "apiframe", "--prompt", "fox").stdout.strip()
    first = world.inbox.wait_for(1)[0]
    wait_until(lambda: world.show(job_id)["deliveries"][0]["status"] == "dead")
    dead = json.loads(world.run("dead", "--json").stdout)["dead"]
    # The server stops first: its worker would otherwise race the command's own round for the delivery.
    world.kill(world.procs[-1], signal.SIGTERM)
    replay = world.run("replay", job_id)
    second = world.inbox.wait_for(2)[1]

    assert [(d["job_id"], d["handler"], d["attempts"]) for d in dead] == [(job_id, "forward", 1)]
    assert "410" in dead[0]["last_error"]
    assert json.loads(replay.stdout)["delivered"] == 1
    assert first[0]["webhook-id"] == second[0]["webhook-id"]
    assert world.show(job_id)["deliveries"][0]["status"] == "delivered"


def test_submit_wait_follows_a_runbase_job_to_the_end_on_its_own(world: World) -> None:
    done = world.run("submit", "--provider", "runbase", "--prompt", "lamp", "--wait", "--json")
    job = json.loads(done.stdout)

    assert job["status"] == "succeeded"
    assert job["completed_via"] == "poll"
    assert job["deliveries"][0]["status"] == "delivered"
    assert len(world.inbox.posts) == 1
    # The finished job is the first sample of its kind's completion-time model (the prior until 5).
    kinds = json.loads(world.run("stats", "--json").stdout)["kinds"]
    assert [(k["kind"], k["samples"], k["learned"]) for k in kinds] == [
        ("runbase kling-3.0 pro default silent", 1, False),
        ("any other kind (prior)", 0, False),
    ]
    assert kinds[0]["p50"] < kinds[0]["p90"] < kinds[0]["p99"]
    table = world.run("stats").stdout
    assert "runbase kling-3.0 pro default silent" in table
    assert "p99" in table


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["submit", "--provider", "runbase", "--prompt", "x", "--negative-prompt", "blur"],
            "negative_prompt",
        ),
        (["submit", "--provider", "apiframe", "--prompt", "x", "--duration", "5"], "duration"),
        (["submit", "--provider", "runbase", "--prompt", "x", "--duration", "99"], "duration"),
        (["submit", "--provider", "runbase", "--prompt", "x", "--meta", "novalue"], "--meta"),
        (["show", "job_nope"], "job_nope"),
        (["replay", "job_nope"], "job_nope"),
    ],
)
def test_a_users_mistake_is_one_line_on_stderr_and_a_nonzero_exit(
    world: World, args: list[str], message: str
) -> None:
    done = world.run(*args, check=False)

    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert world.runbase.requests == []
    assert world.apiframe.requests == []


def test_serve_without_a_secret_is_refused_with_one_line(world: World) -> None:
    world.env.pop("RECEIVER_SECRET")
    done = world.run("serve", check=False, timeout=20)

    assert done.returncode == 2
    assert "RECEIVER_SECRET" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ('name = "chat"\ntype = "slack"\n', "handler 'chat': key 'webhook_url' is required"),
        ('name = "copy"\ntype = "storage"\ntarget = "ftp://x/y"\n', "handler 'copy': key 'target'"),
        (
            'name = "rows"\ntype = "database"\nurl = "sqlite:///x.db"\ntable = "bad name;"\n',
            "handler 'rows': key 'table'",
        ),
        ('name = "x"\ntype = "log"\nmax_attempts = 0\n', "handler 'x': key 'max_attempts'"),
        ('name = "x"\ntype = "nope"\n', "handler 'x': key 'type'"),
    ],
)
def test_invalid_handler_config_stops_start_up_with_one_line(world: World, table: str, expected: str) -> None:
    config = world.tmp / "bad.toml"
    config.write_text("[[handlers]]\n" + table)
    world.env["RECEIVER_CONFIG"] = str(config)
    done = world.run("serve", check=False, timeout=20)

    assert done.returncode == 2
    assert expected in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
