"""Issue 8's many-process run: 2 `serve --no-worker`, 2 `worker`, a loop of CLI `submit` and 4 warm
Lambda containers with their scheduled tick, on one store, take 500 jobs (150 Runbase) in bursts.
Every job ends succeeded and is delivered once, no submit is refused, and Runbase, whose emulator
allows 20 requests in any 10 s, never sees a 21st nor answers 429."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ADMIN, World, free_port, wait_until
from test_rate_budget import most_in_any_window

from tests.support.balancer import bound_balancer
from tests.support.pg import fresh_schema

ROOT = Path(__file__).resolve().parents[2]
TOTAL, RUNBASE, CLI, BURSTS = 500, 150, 30, 5
LIMIT, WINDOW = 20, 10.0

pytestmark = pytest.mark.slow


def plan() -> list[tuple[str, str]]:
    """(provider, prompt) per job: 3 in every 10 go to Runbase."""
    return [("runbase" if n % 10 in (0, 3, 6) else "apiframe", f"swarm clip {n}") for n in range(TOTAL)]


@contextmanager
def store(world: World, kind: str) -> Iterator[str]:
    if kind == "postgres":
        with fresh_schema() as url:
            yield url
    else:
        yield f"sqlite:///{world.tmp / 'swarm.db'}"


@pytest.mark.parametrize(
    "world",
    [
        {
            "apiframe": {"delay": 1.0, "credits": 100 * TOTAL},
            "runbase": {"delay": 1.0, "rate_limit": LIMIT, "rate_window": WINDOW, "balance": 10.0 * TOTAL},
            # The first Runbase poll comes 1.5 s after its submit, once the run is done.
            "env": {"RUNBASE_RATE_LIMIT": str(LIMIT), "RECEIVER_EXPECTED_SECONDS": "30"},
        }
    ],
    indirect=True,
)
@pytest.mark.parametrize("kind", [pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"])
def test_many_processes_share_one_store_and_one_runbase_budget(world: World, kind: str) -> None:
    jobs = plan()
    by_cli, by_http = jobs[:CLI], jobs[CLI:]
    with store(world, kind) as url, bound_balancer() as (balancer, front):
        world.env.update(RECEIVER_DATABASE_URL=url, RECEIVER_PUBLIC_URL=front.url, PYTHONPATH=str(ROOT))
        webs = [_start(world, "serve", "--no-worker", "--port", str(free_port())) for _ in range(2)]
        host = _start(world, "-m", "tests.support.lambda_host", "--concurrency", "4", module=True)
        _start(world, "worker")
        _start(world, "worker")
        assert host.stdout is not None
        lambda_url = host.stdout.readline().strip()
        host.stdout.close()
        web_urls = [f"http://127.0.0.1:{p.args[-1]}" for p in webs]
        wait_until(lambda: all(_up(u) for u in web_urls), timeout=30)
        balancer.backends = [*web_urls, lambda_url]  # Apiframe's webhooks land on any of the three
        front.start()
        started = time.monotonic()

        cli_answers: list[subprocess.CompletedProcess[str]] = []
        cli = threading.Thread(target=lambda: cli_answers.extend(_cli_submit(world, job) for job in by_cli))
        cli.start()
        targets = [*web_urls, lambda_url]
        answers: list[httpx.Response] = []
        with httpx.Client(headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60) as admin:
            size = -(-len(by_http) // BURSTS)
            for b in range(BURSTS):
                burst = list(enumerate(by_http[b * size : (b + 1) * size], start=b * size))
                with ThreadPoolExecutor(16) as senders:
                    answers += senders.map(
                        lambda job: _post(admin, targets[job[0] % 3], job[1], f"swarm-{job[0]}"), burst
                    )
                time.sleep(3)  # a pause between bursts shapes the load; nothing waits on it
            cli.join()
            refused = [(a.status_code, a.text) for a in answers if a.status_code not in (200, 202)]
            refused += [(r.returncode, r.stderr) for r in cli_answers if r.returncode]
            assert refused == []
            ids = [a.json()["id"] for a in answers] + [r.stdout.strip() for r in cli_answers]
            try:
                world.inbox.wait_for(TOTAL, timeout=400)
            except pytest.fail.Exception:
                print(
                    f"\nnot delivered: {json.dumps(_undelivered(admin, web_urls[0], ids, world), indent=1)}"
                )
                raise
            listed = wait_until(lambda: _all_delivered(admin, web_urls[0], ids), timeout=30)
        elapsed = time.monotonic() - started
        host.terminate()
        host_rc = host.wait(timeout=60)

    requests = list(world.runbase.requests)
    sent = list(world.apiframe.webhooks_sent)
    events = [json.loads(body) for _, body in world.inbox.posts]
    event_ids = Counter(e["id"] for e in events)
    figures = {
        "store": kind,
        "seconds": round(elapsed, 1),
        "runbase_requests": len(requests),
        "most_in_any_10s": most_in_any_window([r["t"] for r in requests], WINDOW),
        "runbase_429": sum(r["status"] == 429 for r in requests),
        "duplicate_posts": len(events) - len(event_ids),
        "retried_deliveries": sum(j["deliveries"][0]["attempts"] > 1 for j in listed),
        "answered_queued": sum(a.json()["status"] == "queued" for a in answers),
        "webhooks_by_backend": dict(
            Counter(b for b, path, _ in balancer.answers if path.startswith("/hooks"))
        ),
        "unreachable_backend": balancer.unreachable,
        "webhook_attempts_failed": dict(
            Counter(
                str(w.get("status_code") or w.get("error", "")[:60])
                for w in sent
                if w.get("status_code") != 200
            )
        ),
    }
    print(f"\nswarm figures: {json.dumps(figures)}")

    assert host_rc == 0
    assert len(set(ids)) == TOTAL
    assert {j["status"] for j in listed} == {"succeeded"}
    # One event per job reached the handler; a repeat is only the retry of an attempt that failed.
    assert sorted({e["id"]: e["job"]["id"] for e in events}.values()) == sorted(ids)
    assert figures["duplicate_posts"] <= figures["retried_deliveries"]
    assert len(world.runbase.runs) == RUNBASE
    assert figures["runbase_429"] == 0
    assert figures["most_in_any_10s"] <= LIMIT
    assert {status for _, _, status in balancer.answers} == {200}  # no webhook answered 5xx
    assert len(figures["webhooks_by_backend"]) == 3  # both web processes and the Lambda took webhooks


def _start(world: World, *args: str, module: bool = False) -> subprocess.Popen[str]:
    """A process of the run: `receiver ARGS`, or `python ARGS` with `module`; stopped by the world. Its
    log goes to a file in the test's folder."""
    command = [sys.executable, *args] if module else [sys.executable, "-m", "receiver", *args]
    with (world.tmp / f"{args[0]}-{len(world.procs)}.log").open("w") as log:
        proc = subprocess.Popen(
            command, env=world.env, cwd=world.tmp, stdout=subprocess.PIPE if module else subprocess.DEVNULL,
            stderr=log, text=True,
        )  # fmt: skip
    world.procs.append(proc)
    return proc


def _cli_submit(world: World, job: tuple[str, str]) -> subprocess.CompletedProcess[str]:
    return world.run("submit", "--provider", job[0], "--prompt", job[1], check=False, timeout=120)


def _post(admin: httpx.Client, base: str, job: tuple[str, str], key: str) -> httpx.Response:
    """As a careful client submits: with an Idempotency-Key, sent again when the connection broke
    (a kept-alive connection the server closed as the request went out, on a busy machine), which
    answers with the job the first request made if it got that far."""
    url, body, headers = f"{base}/jobs", {"provider": job[0], "prompt": job[1]}, {"Idempotency-Key": key}
    for _ in range(2):
        try:
            return admin.post(url, json=body, headers=headers)
        except httpx.TransportError:
            continue
    return admin.post(url, json=body, headers=headers)


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _undelivered(admin: httpx.Client, base: str, ids: list[str], world: World) -> list[dict[str, Any]]:
    """The jobs no event reached the inbox for, as the API shows them, to tell a stuck job from a
    stuck delivery when the run fails."""
    seen = {json.loads(body)["job"]["id"] for _, body in world.inbox.posts}
    listed = _listed(admin, base)
    return [listed.get(i, {"id": i, "listed": False}) for i in ids if i not in seen]


def _all_delivered(admin: httpx.Client, base: str, ids: list[str]) -> list[dict[str, Any]] | None:
    listed = _listed(admin, base)
    jobs = [listed[i] for i in ids if i in listed]
    done = len(jobs) == len(ids) and all(j["deliveries"][0]["status"] == "delivered" for j in jobs)
    return jobs if done else None


def _listed(admin: httpx.Client, base: str) -> dict[str, dict[str, Any]]:
    """Every job of the run as `GET /jobs` shows it, by id."""
    return {j["id"]: j for j in admin.get(f"{base}/jobs", params={"limit": 1000}).json()["jobs"]}
