"""Webhook-to-handler latency when the webhook lands on one process and the handler runs in another.

    .venv/bin/python bench/cross_process_latency.py [--jobs 600] [--rate 50] [--pg URL]

Three set-ups on PostgreSQL (`--pg`, default $BENCH_DATABASE_URL or the test server), each in a fresh
schema dropped afterwards, each its own processes:

  apart      `receiver serve --no-worker` and `receiver worker`: the web process records the webhook and
             its commit NOTIFYs; the worker, LISTENing on a connection of its own, dispatches
  no listen  the same with RECEIVER_LISTEN=0: the worker finds the delivery when it next looks
  one        `receiver serve` with its worker (the baseline: the store wakes it in process)

The only handler is `forward`, posting each event to an inbox served by this process. Apiframe
completion webhooks (valid per-job tokens and signatures, as in webhook_latency.py) go out open loop at
`--rate` per second, one per job; latency runs from writing the request to the forward POST's arrival.
A warm-up of 50 jobs, all delivered, comes first (it also proves the worker is up).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from webhook_latency import (
    API_KEY,
    HOST,
    SECRET,
    RawConnection,
    Shot,
    _completed,
    _cpu_seconds,
    _free_port,
    _hook,
    _make_jobs,
    _stop,
    _wait_ready,
)

from receiver.background import BackgroundServer
from receiver.signing import WebhookSigner

PG_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
FORWARD_SECRET = "whsec_YmVuY2gtZm9yd2FyZC1zZWNyZXQ="
WARMUP = 50
CONNECTIONS = 8
ARRIVAL_TIMEOUT = 30.0


@dataclass(frozen=True)
class Setup:
    name: str
    processes: tuple[tuple[str, ...], ...]  # `python -m receiver` arguments, one tuple per process
    env: tuple[tuple[str, str], ...] = ()


SETUPS = (
    Setup("apart", (("serve", "--no-worker"), ("worker",))),
    Setup("no listen", (("serve", "--no-worker"), ("worker",)), (("RECEIVER_LISTEN", "0"),)),
    Setup("one", (("serve",),)),
)


@dataclass
class Inbox:
    """The forward handler's target: when each job's event arrived (perf_counter)."""

    arrived: dict[str, float] = field(default_factory=dict)
    changed: threading.Condition = field(default_factory=threading.Condition)

    async def receive(self, request: Request) -> Response:
        at = time.perf_counter()
        job_id = json.loads(await request.body())["job"]["id"]
        with self.changed:
            self.arrived.setdefault(job_id, at)
            self.changed.notify_all()
        return Response(status_code=200)

    def wait_for(self, job_ids: list[str], timeout: float) -> int:
        """How many of `job_ids` arrived, waiting up to `timeout` real seconds for all of them."""
        with self.changed:
            self.changed.wait_for(lambda: all(j in self.arrived for j in job_ids), timeout)
            return sum(j in self.arrived for j in job_ids)


@contextmanager
def fresh_schema(url: str) -> Iterator[str]:
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def start(setup: Setup, url: str, inbox_url: str, port: int, folder: Path) -> list[subprocess.Popen[bytes]]:
    config = folder / "receiver.toml"
    handler = f'name = "forward"\ntype = "forward"\nurl = "{inbox_url}"\nsecret = "{FORWARD_SECRET}"\n'
    config.write_text(f"[[handlers]]\n{handler}", encoding="utf-8")
    env = {
        **os.environ,
        "RECEIVER_SECRET": SECRET,
        "RECEIVER_DATABASE_URL": url,
        "RECEIVER_CONFIG": str(config),
        "RECEIVER_PUBLIC_URL": f"http://{HOST}:{port}",
        "APIFRAME_API_KEY": API_KEY,
        "APIFRAME_BASE_URL": f"http://{HOST}:9",  # nothing is polled; should it be, not off this machine
        **dict(setup.env),
    }
    processes = []
    for n, arguments in enumerate(setup.processes):
        command = [sys.executable, "-m", "receiver", "--log-level", "warning", *arguments]
        if arguments[0] == "serve":
            command += ["--host", HOST, "--port", str(port)]
        with (folder / f"process-{n}.log").open("wb") as log:
            processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
    return processes


def stop(processes: list[subprocess.Popen[bytes]], folder: Path) -> None:
    for n, process in enumerate(processes):
        _stop(process, folder / f"process-{n}.log")


async def send(jobs: list[tuple[str, str]], port: int, rate: float) -> tuple[dict[str, float], int]:
    """Each job's completion webhook, request i due at i / rate s; when each was written, and the count
    of answers other than 200."""
    signer = WebhookSigner(SECRET)
    shots = [(job_id, _hook(signer.token(job_id, "apiframe"), _completed(pid))) for job_id, pid in jobs]
    idle: asyncio.Queue[RawConnection] = asyncio.Queue()
    for _ in range(CONNECTIONS):
        idle.put_nowait(RawConnection(port))
    sent: dict[str, float] = {}
    non_200 = 0

    async def one(job_id: str, shot: Shot) -> None:
        nonlocal non_200
        connection = await idle.get()
        sent[job_id] = time.perf_counter()
        non_200 += await connection.send(shot) != 200
        idle.put_nowait(connection)

    begin = time.perf_counter()
    tasks = []
    for i, (job_id, shot) in enumerate(shots):
        await asyncio.sleep(max(0.0, begin + i / rate - time.perf_counter()))  # pacing the load
        tasks.append(asyncio.create_task(one(job_id, shot)))
    await asyncio.gather(*tasks)
    while not idle.empty():
        await idle.get_nowait().close()
    return sent, non_200


@dataclass
class Result:
    latencies_ms: list[float]
    cpu_ms: list[float]  # CPU per webhook of each process, in the order of the set-up's processes


async def measure(setup: Setup, args: argparse.Namespace, folder: Path) -> Result:
    inbox = Inbox()
    app = Starlette(routes=[Route("/in", inbox.receive, methods=["POST"])])
    with fresh_schema(args.pg) as url, BackgroundServer(app) as inbox_server:
        jobs = await _make_jobs(url, WARMUP + args.jobs)
        port = _free_port()
        processes = start(setup, url, inbox_server.url + "/in", port, folder)
        try:
            await _wait_ready(f"http://{HOST}:{port}", processes[0])
            for batch in (jobs[:WARMUP], jobs[WARMUP:]):
                cpu = [_cpu_seconds(process.pid) for process in processes]
                sent, non_200 = await send(batch, port, args.rate)
                ids = [job_id for job_id, _ in batch]
                arrived = await asyncio.to_thread(inbox.wait_for, ids, ARRIVAL_TIMEOUT)
                cpu = [
                    _cpu_seconds(process.pid) - before for process, before in zip(processes, cpu, strict=True)
                ]
                if non_200 or arrived < len(ids):
                    print(f"{setup.name}: {non_200} answers not 200, {arrived}/{len(ids)} delivered")
        finally:
            stop(processes, folder)
    latencies = [(inbox.arrived[j] - sent[j]) * 1000 for j in sent if j in inbox.arrived]
    return Result(latencies, [seconds / len(sent) * 1000 for seconds in cpu])


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=600, help="measured webhooks per set-up (default 600)")
    parser.add_argument("--rate", type=float, default=50.0, help="webhooks per second (default 50)")
    parser.add_argument(
        "--pg", default=PG_URL, help="PostgreSQL URL (default $BENCH_DATABASE_URL or the test server)"
    )
    parser.add_argument(
        "--only", choices=[s.name for s in SETUPS], action="append", help="run only these set-ups"
    )
    args = parser.parse_args()
    try:
        psycopg.connect(args.pg, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        print(f"PostgreSQL unreachable: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    results: dict[str, Result] = {}
    for setup in SETUPS:
        if args.only and setup.name not in args.only:
            continue
        folder = Path(tempfile.mkdtemp(prefix="receiver-bench-"))
        try:
            results[setup.name] = asyncio.run(measure(setup, args, folder))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{args.jobs} webhooks at {args.rate:g}/s per set-up, {os.cpu_count()} CPUs, load average {load}")
    for name, result in results.items():
        latencies = result.latencies_ms
        figures = "  ".join(f"p{p}={percentile(latencies, p):7.2f} ms" for p in (50, 90, 99))
        cpu = " + ".join(f"{ms:.2f}" for ms in result.cpu_ms)
        print(
            f"{name:<10} n={len(latencies):<5} {figures}  max={max(latencies):7.2f} ms  CPU/webhook {cpu} ms"
        )
    if "apart" in results and "one" in results:
        apart, one = results["apart"].latencies_ms, results["one"].latencies_ms
        ratios = (percentile(apart, p) / percentile(one, p) for p in (50, 99))
        print("apart / one: p50 {:.2f}x, p99 {:.2f}x".format(*ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
