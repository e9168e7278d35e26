"""/healthz: 503 with the reason while the store is down or the worker has stalled; the worker survives a
database restart and /healthz turns 200 again."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.pgcluster import private_cluster
from tests.support.stack import receiver_stack


def test_healthy_when_the_store_answers_and_the_worker_keeps_its_rounds(tmp_path: Path) -> None:
    with receiver_stack(tmp_path, None, handlers=[]) as stack:
        stack.advance(1.0)  # one full round after the first
        stack.clock.wait_for_sleepers(1)
        answer = httpx.get(f"{stack.url}/healthz")
    assert (answer.status_code, answer.json()) == (200, {"ok": True})


def test_a_web_process_without_a_worker_is_not_judged_by_one(tmp_path: Path) -> None:
    with receiver_stack(tmp_path, None, handlers=[], run_worker=False) as stack:
        stack.clock.advance(3600)
        answer = httpx.get(f"{stack.url}/healthz")
    assert answer.status_code == 200


@pytest.mark.postgres
def test_a_database_restart_makes_healthz_503_and_the_worker_comes_back(tmp_path: Path) -> None:
    with (
        private_cluster() as cluster,
        receiver_stack(
            tmp_path, None, handlers=[], database_url=cluster.url, worker_stale_after=4, store_timeout=0.5
        ) as stack,
    ):
        stack.clock.wait_for_sleepers(1)
        cluster.stop()
        down = httpx.get(f"{stack.url}/healthz", timeout=30)
        assert down.status_code == 503
        assert down.json() == {"ok": False, "problems": [down.json()["problems"][0]]}
        assert down.json()["problems"][0].startswith("store unreachable (")
        # Routes that need the store answer 503 (try again), never 500.
        jobs = stack.admin.get("/jobs")
        assert (jobs.status_code, jobs.headers["retry-after"]) == (503, "5")
        assert jobs.json() == {"error": "PostgreSQL is unavailable (PoolTimeout)"}
        # The worker's rounds fail while the store is down; it backs off on the clock and lives on.
        stack.run_until(lambda: stack.clock.monotonic() > 4)
        stalled = httpx.get(f"{stack.url}/healthz", timeout=30).json()["problems"]
        assert stalled[0].startswith("store unreachable")
        assert stalled[1] == "worker has not finished a round in 4 s"
        cluster.start()
        stack.run_until(lambda: httpx.get(f"{stack.url}/healthz", timeout=30).status_code == 200)
        assert stack.receiver.worker.last_round is not None
        assert stack.clock.monotonic() - stack.receiver.worker.last_round <= 4
