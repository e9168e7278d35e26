"""The Runbase budget, as the emulator counts the requests it receives: one `receiver serve`, and a web
process and a worker process sharing one budget through their store (SQLite file or PostgreSQL)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from conftest import World, wait_until

from tests.support.pg import fresh_schema

LIMIT, WINDOW = 4, 3.0
BUDGET = {
    "env": {"RUNBASE_RATE_LIMIT": str(LIMIT), "RUNBASE_RATE_WINDOW": str(WINDOW)},
    "runbase": {"rate_limit": LIMIT, "rate_window": WINDOW, "delay": 1.0},
}


def most_in_any_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max((sum(1 for u in times[i:] if u < t + window) for i, t in enumerate(times)), default=0)


def submit_and_finish(world: World, count: int) -> list[dict[str, object]]:
    """Submit `count` Runbase jobs through POST /jobs; the emulator's log once all have succeeded."""
    with world.admin() as admin:
        ids = []
        for n in range(count):
            answer = admin.post("/jobs", json={"provider": "runbase", "prompt": f"lamp {n}"})
            assert answer.status_code == 202, answer.text
            ids.append(answer.json()["id"])
        wait_until(
            lambda: all(admin.get(f"/jobs/{i}").json()["status"] == "succeeded" for i in ids), timeout=60
        )
    return list(world.runbase.requests)


def assert_within_the_budget(requests: list[dict[str, object]]) -> None:
    assert [r for r in requests if r["status"] == 429] == []
    assert most_in_any_window([float(str(r["t"])) for r in requests], WINDOW) <= LIMIT
    assert len(requests) > LIMIT  # the budget had to hold some back


@pytest.mark.parametrize("world", [BUDGET], indirect=True)
def test_serve_never_exceeds_the_runbase_budget_in_any_window(world: World) -> None:
    world.serve()
    requests = submit_and_finish(world, 4)

    assert_within_the_budget(requests)


@contextmanager
def store_url(world: World, kind: str) -> Iterator[None]:
    if kind == "sqlite":
        yield
        return
    with fresh_schema() as url:
        world.env["RECEIVER_DATABASE_URL"] = url
        yield


@pytest.mark.parametrize("world", [BUDGET], indirect=True)
@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_web_and_a_worker_process_share_one_budget(world: World, store: str) -> None:
    """RUNBASE_RATE_LIMIT is the deployment's: the web process submits while the worker polls."""
    with store_url(world, store):
        world.serve("--no-worker")
        worker = subprocess.Popen(
            [sys.executable, "-m", "receiver", "worker"], env=world.env, cwd=world.tmp,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        world.procs.append(worker)
        requests = submit_and_finish(world, 6)
        for proc in world.procs:
            world.kill(proc, 15)

    assert_within_the_budget(requests)
    submits = [r for r in requests if r["method"] == "POST"]
    assert (
        len(submits) == 6
    )  # the web process sends those the budget lets through at once, the worker the rest
    assert len(requests) - len(submits) >= 6  # every read is the worker's
