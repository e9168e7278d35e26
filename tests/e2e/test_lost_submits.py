"""Submits that do not go through at once, as a user meets them: a `receiver submit` killed before the
provider's answer, and a submit the provider refuses with 429."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import World, wait_until

from receiver.providers.apiframe import idempotency_key

# No webhook: the job can only finish once the worker's resubmit has told it which Apiframe job it is.
ORPHAN = {"apiframe": {"webhook": "drop"}, "env": {"RECEIVER_SUBMIT_LEASE": "1"}}


@pytest.mark.parametrize("world", [ORPHAN], indirect=True)
def test_submit_killed_before_the_answer_is_resubmitted_with_the_same_key_and_delivered_once(
    world: World,
) -> None:
    world.apiframe.configure(submit_hold=3)  # the job is made at once, its answer comes 3 s later
    submit = subprocess.Popen(
        [sys.executable, "-m", "receiver", "submit", "--provider", "apiframe", "--prompt", "fox"],
        env=world.env, cwd=world.tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    world.procs.append(submit)
    (made,) = wait_until(lambda: list(world.apiframe.jobs.values()))
    world.kill(submit)
    world.apiframe.configure(submit_hold=0)
    (orphan,) = json.loads(world.run("jobs", "--json").stdout)["jobs"]
    world.serve()
    done = wait_until(
        lambda: (
            (job := world.show(orphan["id"]))["deliveries"]
            and job["deliveries"][0]["status"] == "delivered"
            and job
        )
    )
    posts = wait_until(
        lambda: len(p := [r for r in world.apiframe.requests if r["method"] == "POST"]) == 2 and p
    )

    assert submit.returncode == -9
    assert (orphan["status"], orphan["provider_job_id"]) == ("pending", None)
    assert done["status"] == "succeeded"
    assert done["provider_job_id"] == made.id
    assert [(r["status"], r["idempotency_key"]) for r in posts] == [(202, idempotency_key(orphan["id"]))] * 2
    assert len(world.apiframe.jobs) == 1
    assert done["deliveries"][0]["attempts"] == 1
    assert len(world.inbox.wait_for(1)) == 1


def test_submit_wait_shows_a_job_refused_with_429_queued_then_follows_it_to_the_end(world: World) -> None:
    world.runbase.inject(429)
    done = world.run("submit", "--provider", "runbase", "--prompt", "lamp", "--wait", "--json")
    job = json.loads(done.stdout)

    assert f"{job['id']} queued: sent to runbase when its rate budget allows" in done.stderr
    assert job["status"] == "succeeded"
    assert [r["status"] for r in world.runbase.requests if r["method"] == "POST"] == [429, 201]
    assert len(world.inbox.wait_for(1)) == 1


def test_submit_without_wait_says_who_sends_a_queued_job(world: World) -> None:
    world.runbase.inject(429)
    done = world.run("submit", "--provider", "runbase", "--prompt", "lamp")
    job_id = done.stdout.strip()

    assert f"{job_id} queued: a worker (serve, worker or tick) sends it" in done.stderr
    assert world.show(job_id)["status"] == "queued"
