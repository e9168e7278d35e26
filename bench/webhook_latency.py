"""Webhook latency: a real receiver in its own process, hit by concurrent senders with Apiframe webhooks.

    .venv/bin/python bench/webhook_latency.py [--requests 2000] [--concurrency 32] [--rate R]
                                              [--no-worker] [--httpx]

The receiver runs as `python -m receiver serve` in a subprocess (its own GIL), on SQLite in a temporary
folder, with only the `log` handler at log level warning. Jobs are created directly in the store and
their per-job webhook tokens signed with the same secret. Three figures, each after a warm-up:

  completed  one completion webhook per job plus one repeat of it, shuffled (first deliveries and
             duplicates, as providers send them)
  progress   four progress webhooks per live job, shuffled
  healthz    GET /healthz: the floor of the HTTP stack, no store, no token, no signature

Each sender keeps one connection and waits for each answer before sending again (closed loop), so
latency includes queueing inside the receiver: with 32 senders, p50 is about 32 / throughput. With
`--rate R` the load is open loop instead: request i is due at i / R seconds and its latency counts from
then. Senders write prepared HTTP/1.1 bytes on asyncio streams, about 0.1 ms of CPU per request;
httpx.AsyncClient (`--httpx`) spends 2 to 3 ms and becomes the bottleneck on two cores. CPU per request
is printed for both sides, read from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from receiver.events import Job, JobStatus, new_job_id
from receiver.signing import WebhookSigner
from receiver.store import open_store

SECRET = "bench-receiver-secret-0123456789"
API_KEY = "af_bench_api_key_0123456789"
HOST = "127.0.0.1"
WARMUP = 300
STARTUP_TIMEOUT = 30.0

Send = Callable[["Shot"], Awaitable[int]]


@dataclass(frozen=True)
class Shot:
    method: str
    path: str
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()

    def raw(self, port: int) -> bytes:
        lines = [f"{self.method} {self.path} HTTP/1.1", f"host: {HOST}:{port}"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        lines.append(f"content-length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


@dataclass
class Figures:
    name: str
    latencies_ms: list[float]
    seconds: float
    non_200: int
    server_cpu: float
    client_cpu: float

    def line(self) -> str:
        lat = sorted(self.latencies_ms)
        n = len(lat)

        def pct(p: float) -> float:
            return lat[min(n - 1, round(p / 100 * (n - 1)))]

        return (
            f"{self.name:<10} n={n:<5} p50={pct(50):6.2f} ms  p90={pct(90):6.2f} ms  p99={pct(99):6.2f} ms"
            f"  max={lat[-1]:7.2f} ms  {n / self.seconds:5.0f} req/s  non-200={self.non_200}\n"
            f"{'':<10} CPU per request: receiver {self.server_cpu / n * 1000:.2f} ms,"
            f" senders {self.client_cpu / n * 1000:.2f} ms"
        )


class RawConnection:
    """One keep-alive HTTP/1.1 connection that writes prepared bytes and reads a sized answer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def send(self, shot: Shot) -> int:
        if self._streams is None:
            self._streams = await asyncio.open_connection(HOST, self.port)
        reader, writer = self._streams
        writer.write(shot.raw(self.port))
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        return status

    async def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            await self._streams[1].wait_closed()


def _signature(body: bytes) -> str:
    key = hashlib.sha256(API_KEY.encode()).digest()
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def _hook(token: str, payload: dict[str, object]) -> Shot:
    body = json.dumps(payload).encode()
    headers = (("content-type", "application/json"), ("x-webhook-signature", _signature(body)))
    return Shot("POST", f"/hooks/apiframe/{token}", body, headers)


def _completed(provider_job_id: str) -> dict[str, object]:
    return {
        "event": "completed",
        "jobId": provider_job_id,
        "status": "COMPLETED",
        "progress": 100,
        "result": {"videoUrl": "http://127.0.0.1/x.mp4"},
        "model": "kling-3.0",
    }


def _progress(provider_job_id: str, percent: int) -> dict[str, object]:
    return {"event": "progress", "jobId": provider_job_id, "status": "PROCESSING", "progress": percent}


@dataclass(frozen=True)
class Jobs:
    """(job id, provider job id) pairs for each phase."""

    warm_done: list[tuple[str, str]]
    done: list[tuple[str, str]]
    warm_live: list[tuple[str, str]]
    live: list[tuple[str, str]]


async def _make_jobs(url: str, count: int) -> list[tuple[str, str]]:
    """(job id, provider job id) for `count` submitted Apiframe jobs, with no poll due during the run."""
    store = open_store(url)
    await store.open()
    try:
        now = datetime.now(UTC)
        jobs = []
        for _ in range(count):
            job = Job(
                id=new_job_id(),
                provider="apiframe",
                status=JobStatus.PENDING,
                request={"prompt": "bench"},
                created_at=now,
            )
            provider_job_id = str(uuid.uuid4())
            await store.create_job(job, now + timedelta(hours=1))
            await store.mark_submitted(job.id, provider_job_id, now, now + timedelta(hours=1))
            jobs.append((job.id, provider_job_id))
        return jobs
    finally:
        await store.close()


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _start_server(folder: Path, port: int, *, worker: bool) -> subprocess.Popen[bytes]:
    config = folder / "receiver.toml"
    config.write_text('[[handlers]]\nname = "log"\ntype = "log"\n', encoding="utf-8")
    env = {
        **os.environ,
        "RECEIVER_SECRET": SECRET,
        "RECEIVER_DATABASE_URL": f"sqlite:///{folder / 'receiver.db'}",
        "RECEIVER_CONFIG": str(config),
        "RECEIVER_PUBLIC_URL": f"http://{HOST}:{port}",
        "APIFRAME_API_KEY": API_KEY,
        # Nothing is polled during the run; should a poll happen, it must not leave this machine.
        "APIFRAME_BASE_URL": f"http://{HOST}:9",
    }
    command = [sys.executable, "-m", "receiver", "--log-level", "warning", "serve"]
    command += ["--host", HOST, "--port", str(port)]
    if not worker:
        command.append("--no-worker")
    with (folder / "server.log").open("wb") as log:
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=folder)


async def _wait_ready(base: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"receiver exited with {server.returncode} before it was ready")
            try:
                if (await client.get(f"{base}/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)  # readiness polling of a starting process, not test synchronisation
    raise RuntimeError(f"receiver not ready within {STARTUP_TIMEOUT:g} s")


async def _fire(
    name: str, shots: list[Shot], senders: list[Send], server_pid: int, rate: float | None
) -> Figures:
    """Closed loop (rate None): each sender sends again as soon as it has its answer. Open loop: request
    i is due at start + i / rate and its latency counts from then, waiting for a free sender included."""
    latencies: list[float] = []
    non_200 = 0
    queue = enumerate(shots)

    async def sender(send: Send) -> None:
        nonlocal non_200
        for i, shot in queue:
            sent = time.perf_counter()
            if rate is not None:
                due = start + i / rate
                await asyncio.sleep(max(0.0, due - sent))  # pacing the load, not synchronisation
                sent = due
            status = await send(shot)
            latencies.append((time.perf_counter() - sent) * 1000)
            non_200 += status != 200

    server_cpu, client_cpu = _cpu_seconds(server_pid), time.process_time()
    start = time.perf_counter()
    await asyncio.gather(*(sender(send) for send in senders))
    elapsed = time.perf_counter() - start
    server_cpu, client_cpu = _cpu_seconds(server_pid) - server_cpu, time.process_time() - client_cpu
    return Figures(name, latencies, elapsed, non_200, server_cpu, client_cpu)


async def _measure(
    args: argparse.Namespace, port: int, server: subprocess.Popen[bytes], jobs: Jobs
) -> list[Figures]:
    rng = random.Random(7)
    signer = WebhookSigner(SECRET)

    def completed(pairs: list[tuple[str, str]]) -> list[Shot]:
        shots = [_hook(signer.token(job_id, "apiframe"), _completed(pid)) for job_id, pid in pairs]
        shots += shots  # each job's completion twice: the first delivery and a repeat
        rng.shuffle(shots)
        return shots

    def progress(pairs: list[tuple[str, str]]) -> list[Shot]:
        shots = [
            _hook(signer.token(job_id, "apiframe"), _progress(pid, percent))
            for job_id, pid in pairs
            for percent in (20, 40, 60, 80)
        ]
        rng.shuffle(shots)
        return shots

    health = [Shot("GET", "/healthz")] * args.requests
    plan = [
        ("warm-up", completed(jobs.warm_done)),
        ("completed", completed(jobs.done)),
        ("warm-up", progress(jobs.warm_live)),
        ("progress", progress(jobs.live)),
        ("warm-up", health[:WARMUP]),
        ("healthz", health),
    ]
    if args.httpx:
        limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
        async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", limits=limits, timeout=60.0) as client:

            async def send(shot: Shot) -> int:
                response = await client.request(
                    shot.method, shot.path, content=shot.body, headers=shot.headers
                )
                return response.status_code

            return [
                await _fire(name, shots, [send] * args.concurrency, server.pid, args.rate)
                for name, shots in plan
            ]
    connections = [RawConnection(port) for _ in range(args.concurrency)]
    try:
        return [
            await _fire(name, shots, [c.send for c in connections], server.pid, args.rate)
            for name, shots in plan
        ]
    finally:
        for connection in connections:
            await connection.close()


async def _run(args: argparse.Namespace, folder: Path) -> list[Figures]:
    n_done, n_live = max(1, args.requests // 2), max(1, args.requests // 4)
    n_warm_done, n_warm_live = WARMUP // 2, WARMUP // 4
    pairs = await _make_jobs(
        f"sqlite:///{folder / 'receiver.db'}", n_warm_done + n_done + n_warm_live + n_live
    )
    cuts = [n_warm_done, n_warm_done + n_done, n_warm_done + n_done + n_warm_live]
    jobs = Jobs(pairs[: cuts[0]], pairs[cuts[0] : cuts[1]], pairs[cuts[1] : cuts[2]], pairs[cuts[2] :])

    port = _free_port()
    server = _start_server(folder, port, worker=not args.no_worker)
    try:
        await _wait_ready(f"http://{HOST}:{port}", server)
        figures = await _measure(args, port, server, jobs)
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"http://{HOST}:{port}/metrics")).text
    finally:
        _stop(server, folder / "server.log")
    succeeded = next((line for line in metrics.splitlines() if 'status="succeeded"' in line), "none")
    print(f"succeeded jobs in the store: {succeeded} (expected {n_warm_done + n_done})")
    return [f for f in figures if f.name != "warm-up"]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="requests per figure (default 2000)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent senders (default 32)")
    parser.add_argument("--no-worker", action="store_true", help="serve webhooks only, no in-process worker")
    parser.add_argument(
        "--rate", type=float, help="open loop: requests per second in total (default: closed loop)"
    )
    parser.add_argument(
        "--httpx", action="store_true", help="send with httpx.AsyncClient instead of raw streams"
    )
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="receiver-bench-"))
    try:
        figures = asyncio.run(_run(args, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"{args.concurrency} concurrent senders ({'httpx' if args.httpx else 'raw streams'},"
        f" {f'open loop at {args.rate:g} req/s' if args.rate else 'closed loop'}), receiver"
        f" {'without' if args.no_worker else 'with'} its worker, {os.cpu_count()} CPUs, load average {load}"
    )
    for figure in figures:
        print(figure.line())
    return 0


def _stop(process: subprocess.Popen[bytes], log: Path) -> None:
    """Terminate a receiver process; when it did not exit cleanly, show the end of its log."""
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.returncode not in (0, -15):
        tail = log.read_text(errors="replace")[-2000:]
        print(f"{process.args} exited with {process.returncode}:\n{tail}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
