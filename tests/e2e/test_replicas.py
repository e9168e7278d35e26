"""Two `receiver serve` replicas sharing PostgreSQL: every job delivered once, whichever replica works it."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from conftest import ADMIN, World, free_port, wait_until

from tests.support.pg import fresh_schema

pytestmark = pytest.mark.postgres


def test_two_replicas_on_postgres_deliver_each_job_once(world: World) -> None:
    with fresh_schema() as url:
        world.env["RECEIVER_DATABASE_URL"] = url
        world.serve()
        second = f"http://127.0.0.1:{free_port()}"
        replica = subprocess.Popen(
            [sys.executable, "-m", "receiver", "serve", "--port", second.rsplit(":", 1)[1]],
            env=world.env, cwd=world.tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        world.procs.append(replica)
        wait_until(lambda: _up(second))
        ids = []
        for n, base in enumerate([world.env["RECEIVER_PUBLIC_URL"], second] * 3):
            provider = "runbase" if n % 2 else "apiframe"
            answer = httpx.post(
                f"{base}/jobs", json={"provider": provider, "prompt": f"clip {n}"},
                headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30,
            )  # fmt: skip
            assert answer.status_code == 202, answer.text
            ids.append(answer.json()["id"])
        world.inbox.wait_for(6, timeout=40)
        jobs = wait_until(lambda: _all_delivered(second, ids), timeout=30)
        for proc in world.procs:
            world.kill(proc, 15)

    assert len(world.inbox.posts) == 6
    assert {j["completed_via"] for j in jobs} == {"webhook", "poll"}
    assert all(j["deliveries"][0]["attempts"] == 1 for j in jobs)


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _all_delivered(url: str, ids: list[str]) -> list[dict[str, object]] | None:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    jobs = [httpx.get(f"{url}/jobs/{i}", headers=headers).json() for i in ids]
    ok = all(j["deliveries"] and j["deliveries"][0]["status"] == "delivered" for j in jobs)
    return jobs if ok else None
