"""Webhooks and work apart: `serve --no-worker` with `receiver tick` (cron, serverless) or `receiver worker`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import httpx
from conftest import RUNBASE_KEY, World, wait_until


def runbase_status(world: World, run_id: str) -> str:
    answer = httpx.get(
        f"{world.env['RUNBASE_BASE_URL']}/api/v1/runs/{run_id}",
        headers={"Authorization": f"Bearer {RUNBASE_KEY}"},
    )
    status: str = answer.json()["status"]
    return status


def test_tick_polls_the_due_job_records_it_and_delivers_then_exits(world: World) -> None:
    world.serve("--no-worker")
    job = json.loads(world.run("submit", "--provider", "runbase", "--prompt", "lamp", "--json").stdout)
    wait_until(lambda: runbase_status(world, job["provider_job_id"]) == "succeeded")
    counts = json.loads(world.run("tick").stdout)
    done = world.show(job["id"])

    assert counts["polled"] == 1
    assert counts["completed"] == 1
    assert counts["delivered"] == 1
    assert done["status"] == "succeeded"
    assert done["completed_via"] == "poll"
    assert len(world.inbox.posts) == 1


def test_worker_process_completes_and_delivers_and_stops_on_sigterm(world: World) -> None:
    world.serve("--no-worker")
    worker = subprocess.Popen(
        [sys.executable, "-m", "receiver", "worker"], env=world.env, cwd=world.tmp,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        job_id = world.run("submit", "--provider", "runbase", "--prompt", "lamp").stdout.strip()
        world.inbox.wait_for(1)
        done = wait_until(lambda: (j := world.show(job_id))["deliveries"][0]["status"] == "delivered" and j)
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=20)

    assert done["completed_via"] == "poll"
    assert code == 0
