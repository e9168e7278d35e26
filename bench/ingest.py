"""Webhook ingest: `receiver serve` against a bare Starlette route of the same shape, same uvicorn.

    .venv/bin/python bench/ingest.py [--rounds 5] [--requests 9000] [--connections 32] [--jobs 300]
                                     [--generators 2] [--pg URL | --no-pg] [--repeat]

Targets, each a server in its own process on loopback, measured in interleaved rounds (the order
rotates each round) so that a machine shared with other work slows them alike:

  bare      a Starlette app with one route, POST /hooks/{provider}/{token}: reads the body, parses the
            JSON, answers a JSON object; served with `receiver.serving.server_config`, as `serve` does
  sqlite    `python -m receiver serve` (worker included, default log level) on SQLite in a temp folder
  postgres  the same on PostgreSQL (`--pg`, default $BENCH_DATABASE_URL or the test server), in a fresh
            schema dropped afterwards; skipped with the reason when the server cannot be reached
  floor     a raw asyncio server answering every request with fixed bytes: the load generator's own
            ceiling, to show that it is not what limits `bare`

Load: Apiframe progress webhooks (valid per-job token, `X-Webhook-Signature`) spread over `--jobs` jobs
created fresh for every round, each job's reports advancing 1, 2, 3, ... (`--repeat`: every report the
same, so each changes nothing). `--generators` processes, each holding its share of `--connections`
keep-alive connections, write prepared requests and parse answers with a bare asyncio protocol, closed
loop (each connection sends again once answered). Every answer must be 200; after each receiver round
the store must hold, for every job, the last progress sent: every 200 was committed.

The figure is receiver req/s over bare req/s of the same round; the median over rounds is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import pickle
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

SECRET = "bench-receiver-secret-0123456789"
API_KEY = "af_bench_api_key_0123456789"
HOST = "127.0.0.1"
PG_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
STARTUP_TIMEOUT = 30.0
LOG_HANDLER = '[[handlers]]\nname = "log"\ntype = "log"\n'
ANSWER = b'{"ok":true,"status":"running","duplicate":false}'


# ---------------------------------------------------------------- servers run by this script


def bare_app() -> Any:
    """The baseline: the route's shape (path parameters, body, JSON in and out) and nothing else."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def hook(request: Request) -> JSONResponse:
        data = json.loads(await request.body())
        duplicate = not isinstance(data, dict)
        return JSONResponse({"ok": True, "status": "running", "duplicate": duplicate})

    return Starlette(routes=[Route("/hooks/{provider}/{token}", hook, methods=["POST"])])


def serve_bare(port: int) -> None:
    import uvicorn

    from receiver.serving import server_config

    config = server_config(bare_app(), host=HOST, port=port, log_level="warning", access_log=False)
    uvicorn.Server(config).run()


class FloorProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive at its cheapest: split requests by content-length, answer fixed bytes."""

    RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(ANSWER),
        ANSWER,
    )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = _content_length(self.buffer[:end])
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            self.transport.write(self.RESPONSE)


def serve_floor(port: int) -> None:
    _use_uvloop()

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(FloorProtocol, HOST, port)
        await server.serve_forever()

    asyncio.run(main())


def _content_length(head: bytes) -> int:
    at = head.lower().find(b"content-length:")
    if at < 0:
        return 0
    return int(head[at + 15 : head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None])


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# ---------------------------------------------------------------- load generator (own processes)


class Sender(asyncio.Protocol):
    """One keep-alive connection: write a request, parse the answer, write the next (closed loop)."""

    def __init__(self, shots: list[bytes], state: dict[str, Any], done: asyncio.Future[None]) -> None:
        self.shots, self.state, self.done = shots, state, done
        self.buffer = b""
        self.sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def start(self) -> None:
        self._next()

    def _next(self) -> None:
        state = self.state
        if state["next"] >= len(self.shots) and state["cycle"]:  # a load that runs until it is stopped
            state["next"] = 0
        if state["next"] >= len(self.shots):
            state["open"] -= 1
            if state["open"] == 0 and not self.done.done():
                self.done.set_result(None)
            return
        shot = self.shots[state["next"]]
        state["next"] += 1
        self.sent_at = time.perf_counter()
        self.transport.write(shot)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        length = _content_length(self.buffer[:end])
        if len(self.buffer) < end + 4 + length:
            return
        status = int(self.buffer[9:12])
        self.buffer = self.buffer[end + 4 + length :]
        self.state["latencies"].append(time.perf_counter() - self.sent_at)
        if status != 200:
            self.state["non_200"][status] = self.state["non_200"].get(status, 0) + 1
        self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"server closed a connection ({exc})"))


def generate(port: int, shots_file: str, connections: int, *, cycle: bool = False) -> None:
    """Child process: connect, print `ready`, wait for a line on stdin, send everything, print figures.
    `cycle`: send the shots over and over until a second line on stdin, then stop."""
    _use_uvloop()
    shots: list[bytes] = pickle.loads(Path(shots_file).read_bytes())

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        state: dict[str, Any] = {"next": 0, "open": connections, "latencies": [], "non_200": {}}
        state["cycle"] = cycle
        senders = []
        for _ in range(connections):
            _, sender = await loop.create_connection(lambda: Sender(shots, state, done), HOST, port)
            senders.append(sender)
        print("ready", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        cpu, start = time.process_time(), time.time()
        for sender in senders:
            sender.start()
        if cycle:
            await loop.run_in_executor(None, sys.stdin.readline)
            state["cycle"], state["next"] = False, len(shots)
        await done
        end = time.time()
        for sender in senders:
            sender.transport.close()
        lat = sorted(state["latencies"])
        return {
            "start": start,
            "end": end,
            "n": len(lat),
            "non_200": state["non_200"],
            "cpu": time.process_time() - cpu,
            "p50": lat[len(lat) // 2] if lat else 0.0,
            "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else 0.0,
        }

    print(json.dumps(asyncio.run(main())), flush=True)


# ---------------------------------------------------------------- the benchmark


@dataclass
class Target:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    store_url: str | None = None  # receivers: where jobs are made and their progress checked
    rates: list[float] = field(default_factory=list)
    cpu_per_request: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process and its reaped children (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _signature(body: bytes) -> str:
    key = hashlib.sha256(API_KEY.encode()).digest()
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def _request(port: int, token: str, provider_job_id: str, percent: int) -> bytes:
    body = json.dumps(
        {"event": "progress", "jobId": provider_job_id, "status": "PROCESSING", "progress": percent}
    ).encode()
    head = (
        f"POST /hooks/apiframe/{token} HTTP/1.1\r\nhost: {HOST}:{port}\r\n"
        f"content-type: application/json\r\nx-webhook-signature: {_signature(body)}\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def _wait_port(port: int, process: subprocess.Popen[bytes], name: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode} before it listened")
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)  # readiness of a starting process, not synchronisation of a test
    raise RuntimeError(f"{name} did not listen within {STARTUP_TIMEOUT:g} s")


def start_receiver(
    name: str, url: str, folder: Path, extra_env: dict[str, str], config_text: str = LOG_HANDLER
) -> Target:
    port = _free_port()
    config = folder / f"{name}.toml"
    config.write_text(config_text, encoding="utf-8")
    env = {
        **os.environ,
        "RECEIVER_SECRET": SECRET,
        "RECEIVER_DATABASE_URL": url,
        "RECEIVER_CONFIG": str(config),
        "RECEIVER_PUBLIC_URL": f"http://{HOST}:{port}",
        "APIFRAME_API_KEY": API_KEY,
        "APIFRAME_BASE_URL": f"http://{HOST}:9",  # nothing is polled; should it be, it stays here
        **extra_env,
    }
    command = [sys.executable, "-m", "receiver", "serve", "--host", HOST, "--port", str(port)]
    process = _start(command, env, folder / f"{name}.log")
    _wait_port(port, process, name)
    return Target(name, port, process, store_url=url)


def start_script_server(name: str, flag: str, folder: Path) -> Target:
    port = _free_port()
    process = _start([sys.executable, __file__, flag, str(port)], dict(os.environ), folder / f"{name}.log")
    _wait_port(port, process, name)
    return Target(name, port, process)


async def make_jobs(url: str, count: int) -> list[tuple[str, str]]:
    """(job id, provider job id) of `count` submitted Apiframe jobs, none due for a poll for an hour."""
    from receiver.events import Job, JobStatus, new_job_id
    from receiver.store import open_store

    store = open_store(url)
    await store.open()
    try:
        now = datetime.now(UTC)
        jobs = []
        for _ in range(count):
            job = Job(
                id=new_job_id(), provider="apiframe", status=JobStatus.PENDING, request={}, created_at=now
            )
            provider_job_id = str(uuid.uuid4())
            await store.create_job(job, now + timedelta(hours=2))
            await store.mark_submitted(job.id, provider_job_id, now, now + timedelta(hours=1))
            jobs.append((job.id, provider_job_id))
        return jobs
    finally:
        await store.close()


async def stored_progress(url: str, job_ids: list[str]) -> dict[str, int | None]:
    from receiver.store import open_store

    store = open_store(url)
    await store.open()
    try:
        found = {}
        for job_id in job_ids:
            job = await store.get_job(job_id)
            found[job_id] = None if job is None else job.progress
        return found
    finally:
        await store.close()


def plan(target: Target, args: argparse.Namespace, requests: int) -> tuple[list[list[bytes]], dict[str, int]]:
    """Each generator's requests, and the progress each job must hold once all are answered."""
    from receiver.signing import WebhookSigner

    if target.store_url is not None:
        jobs = asyncio.run(make_jobs(target.store_url, args.jobs))
    else:
        jobs = [(f"bare-{i}", str(uuid.uuid4())) for i in range(args.jobs)]
    signer = WebhookSigner(SECRET)
    tokens = [signer.token(job_id, "apiframe") for job_id, _ in jobs]
    shares: list[list[bytes]] = [[] for _ in range(args.generators)]
    last: dict[str, int] = {}
    for i in range(requests):
        j = i % len(jobs)
        percent = 5 if args.repeat else min(99, i // len(jobs) + 1)
        shares[i % args.generators].append(_request(target.port, tokens[j], jobs[j][1], percent))
        last[jobs[j][0]] = percent
    return shares, last


def fire(target: Target, shares: list[list[bytes]], connections: int, folder: Path) -> dict[str, Any]:
    generators = []
    per = [
        connections // len(shares) + (1 if g < connections % len(shares) else 0) for g in range(len(shares))
    ]
    for g, shots in enumerate(shares):
        path = folder / f"shots-{g}.pickle"
        path.write_bytes(pickle.dumps(shots))
        command = [sys.executable, __file__, "--generate", str(target.port), str(path), str(per[g])]
        generators.append(subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    for gen in generators:
        assert gen.stdout is not None
        if gen.stdout.readline().strip() != "ready":
            raise RuntimeError(f"a load generator for {target.name} did not connect")
    cpu = _cpu_seconds(target.process.pid)
    for gen in generators:
        assert gen.stdin is not None
        gen.stdin.write("go\n")
        gen.stdin.flush()
    results = []
    for gen in generators:
        out, _ = gen.communicate(timeout=600)
        if gen.returncode != 0:
            raise RuntimeError(f"a load generator for {target.name} failed ({gen.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    server_cpu = _cpu_seconds(target.process.pid) - cpu
    n = sum(r["n"] for r in results)
    seconds = max(r["end"] for r in results) - min(r["start"] for r in results)
    non_200: dict[str, int] = {}
    for r in results:
        for code, count in r["non_200"].items():
            non_200[code] = non_200.get(code, 0) + count
    return {
        "rate": n / seconds,
        "n": n,
        "non_200": non_200,
        "server_cpu_ms": server_cpu / n * 1000,
        "client_cpu_ms": sum(r["cpu"] for r in results) / n * 1000,
        "p99_ms": max(r["p99"] for r in results) * 1000,
    }


def round_of(target: Target, args: argparse.Namespace, folder: Path, requests: int, *, keep: bool) -> None:
    shares, last = plan(target, args, requests)
    figures = fire(target, shares, args.connections, folder)
    if figures["non_200"]:
        raise RuntimeError(f"{target.name}: answers other than 200: {figures['non_200']}")
    if target.store_url is not None:
        stored = asyncio.run(stored_progress(target.store_url, list(last)))
        wrong = {job: (stored[job], want) for job, want in last.items() if stored[job] != want}
        if wrong:
            raise RuntimeError(
                f"{target.name}: {len(wrong)} jobs lack their last report, e.g. {next(iter(wrong.items()))}"
            )
    if keep:
        target.rates.append(figures["rate"])
        target.cpu_per_request.append(figures["server_cpu_ms"])
        target.p99.append(figures["p99_ms"])
        print(
            f"  {target.name:<9} {figures['rate']:7.0f} req/s  answer p99 {figures['p99_ms']:6.1f} ms"
            f"  CPU per request: server {figures['server_cpu_ms']:.3f} ms,"
            f" generators {figures['client_cpu_ms']:.3f} ms",
            flush=True,
        )


def pg_schema(url: str) -> tuple[str, str] | str:
    """(scoped URL, schema), or why PostgreSQL cannot be used."""
    try:
        import psycopg

        schema = f"bench_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
    except Exception as exc:  # any reason to skip is printed
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}", schema


def drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=9000, help="per target and round")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--generators", type=int, default=2, help="load generator processes")
    parser.add_argument("--pg", default=PG_URL)
    parser.add_argument("--no-pg", action="store_true")
    parser.add_argument("--no-floor", action="store_true")
    parser.add_argument("--repeat", action="store_true", help="every report the same: changes nothing")
    parser.add_argument(
        "--hold", type=float, default=0.0, help="seconds to wait before the rounds (to attach py-spy)"
    )
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the receivers")
    args = parser.parse_args()
    extra_env = dict(item.split("=", 1) for item in args.env)

    print("command:", " ".join([".venv/bin/python", "bench/ingest.py", *sys.argv[1:]]))
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs")
    folder = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    targets: list[Target] = []
    schema: tuple[str, str] | str = "not asked for (--no-pg)" if args.no_pg else pg_schema(args.pg)
    try:
        targets.append(start_script_server("bare", "--serve-bare", folder))
        targets.append(start_receiver("sqlite", f"sqlite:///{folder / 'receiver.db'}", folder, extra_env))
        if isinstance(schema, tuple):
            targets.append(start_receiver("postgres", schema[0], folder, extra_env))
        else:
            print(f"postgres skipped: {schema}")
        if not args.no_floor:
            targets.append(start_script_server("floor", "--serve-floor", folder))
        for target in targets:  # warm-up: imports, connections, caches, first pages
            round_of(target, args, folder, min(args.requests, 2000), keep=False)
        if args.hold:
            print("pids: " + ", ".join(f"{t.name} {t.process.pid}" for t in targets), flush=True)
            time.sleep(args.hold)
        for r in range(args.rounds):
            print(f"round {r + 1}", flush=True)
            for target in targets[r % len(targets) :] + targets[: r % len(targets)]:
                round_of(target, args, folder, args.requests, keep=True)
        print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        summary(targets, args)
    finally:
        for target in targets:
            target.process.terminate()
        for target in targets:
            try:
                target.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                target.process.kill()
        if isinstance(schema, tuple):
            drop_schema(args.pg, schema[1])
        shutil.rmtree(folder, ignore_errors=True)
    return 0


def summary(targets: list[Target], args: argparse.Namespace) -> None:
    by_name = {t.name: t for t in targets}
    bare = by_name["bare"]
    kind = "repeated (no-op) progress" if args.repeat else "advancing progress"
    print(
        f"\n{kind}, {args.jobs} jobs, {args.connections} connections, {args.generators} generators, "
        f"{args.requests} requests per target and round, {args.rounds} rounds; median over rounds:"
    )
    for t in targets:
        line = (
            f"  {t.name:<9} {statistics.median(t.rates):7.0f} req/s"
            f"  server CPU {statistics.median(t.cpu_per_request):.3f} ms/request"
        )
        if t is not bare and t.name != "floor":
            ratios = [a / b for a, b in zip(t.rates, bare.rates, strict=True)]
            cpu = [b / a for a, b in zip(t.cpu_per_request, bare.cpu_per_request, strict=True)]
            line += (
                f"  ratio to bare {statistics.median(ratios):.2f}"
                f" (rounds {min(ratios):.2f}-{max(ratios):.2f});"
                f" bare's CPU per request over its {statistics.median(cpu):.2f}"
            )
        if t.name == "floor":
            times = statistics.median(t.rates) / statistics.median(bare.rates)
            line += f"  ({times:.1f}x bare: the generators' ceiling)"
        print(line)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-bare":
        serve_bare(int(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--serve-floor":
        serve_floor(int(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--generate":
        generate(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), cycle="--cycle" in sys.argv[5:])
    else:
        sys.exit(main())
