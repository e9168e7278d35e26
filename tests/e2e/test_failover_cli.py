"""`receiver submit --provider auto` as a user runs it: the job goes where it can run."""

from __future__ import annotations

import json

import pytest
from conftest import World

NO_CREDITS = {"apiframe": {"credits": 0}}


@pytest.mark.parametrize("world", [NO_CREDITS], indirect=True)
def test_submit_auto_runs_the_job_on_runbase_when_apiframe_has_no_credits(world: World) -> None:
    done = world.run("submit", "--provider", "auto", "--prompt", "lamp", "--wait", "--json")
    job = json.loads(done.stdout)

    assert job["status"] == "succeeded"
    assert job["provider"] == "runbase"
    assert [(a["provider"], a["outcome"]) for a in job["attempts"]] == [
        ("apiframe", "refused"),
        ("runbase", "accepted"),
    ]
    (event,) = [json.loads(post.body) for post in world.inbox.wait_for(1)]
    assert event["job"]["attempts"] == job["attempts"]


def test_submit_with_a_provider_that_does_not_exist_is_one_line_and_exit_2(world: World) -> None:
    done = world.run("submit", "--provider", "runbase,nope", "--prompt", "lamp", check=False)

    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "--provider" in done.stderr
    assert "nope" in done.stderr
    assert json.loads(world.run("jobs", "--json").stdout)["jobs"] == []
