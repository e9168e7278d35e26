"""Webhook arrival to handler call, under the ingest load of bench/ingest.py.

    .venv/bin/python bench/latency.py [--completions 300] [--unloaded 100] [--rate 20] [--pg URL]

`python -m receiver serve` (worker in the same process, as deployed by default) on SQLite in a temp
folder (`--pg [URL]`: on PostgreSQL in a fresh schema instead), with one handler, `Stamp` (below),
which sends the time it is called to this script in a UDP datagram. The ingest load runs throughout:
`--generators` processes send Apiframe progress webhooks for 300 jobs on 32 keep-alive connections
as fast as they are answered (bench/ingest.py's generators), over and over until the last completion's
handler was called. Meanwhile this script sends completion webhooks for other jobs, open loop at
`--rate` per second, each on its own connection; a completion's latency runs from writing its request
to its handler's call (wall clock, one machine), in two parts: to the moment the receiver began to
record it (the event's `completed_at`: the request's turn, token, body, parsing) and from there to the
call (commit, hand-off to the worker, its claim). Every generator must still be sending when the last
handler is called, and every answer must be 200; otherwise the run fails. The baseline, in the same
run: `--unloaded` completions sent the same way before the load starts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ingest import (
    HOST,
    PG_URL,
    SECRET,
    _content_length,
    _free_port,
    _request,
    _signature,
    _use_uvloop,
    drop_schema,
    make_jobs,
    pg_schema,
    start_receiver,
)

from receiver.events import parse_iso
from receiver.signing import WebhookSigner

ARRIVAL_TIMEOUT = 30.0


class Stamp:
    """The handler, loaded by the receiver as `latency:Stamp` (bench/ on its PYTHONPATH): when it is
    called with an event, it sends the job id, the wall-clock time and the event's `completed_at` (when
    the receiver began to record the completion) in one UDP datagram to `port`."""

    def __init__(self, port: int) -> None:
        self.address = (HOST, port)
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    async def handle(self, event: dict[str, Any]) -> None:
        job = event["job"]
        self.socket.sendto(f"{job['id']} {time.time()!r} {job['completed_at']}".encode(), self.address)


class Calls(asyncio.DatagramProtocol):
    """This script's side of Stamp: job id -> when its handler was called and when the receiver began
    to record its completion (wall clock)."""

    called: dict[str, float] = {}
    recorded: dict[str, float] = {}

    def datagram_received(self, data: bytes, addr: Any) -> None:
        job_id, at, completed_at = data.decode().split(" ")
        self.called.setdefault(job_id, float(at))
        moment = parse_iso(completed_at)
        assert moment is not None
        self.recorded.setdefault(job_id, moment.timestamp())


def completion(port: int, token: str, provider_job_id: str) -> bytes:
    body = json.dumps(
        {
            "event": "completed",
            "jobId": provider_job_id,
            "status": "COMPLETED",
            "progress": 100,
            "result": {"videoUrl": "http://127.0.0.1:9/v.mp4"},
            "model": "kling-3.0",
        }
    ).encode()
    head = (
        f"POST /hooks/apiframe/{token} HTTP/1.1\r\nhost: {HOST}:{port}\r\ncontent-type: application/json\r\n"
        f"x-webhook-signature: {_signature(body)}\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def send_completions(port: int, shots: list[tuple[str, bytes]], rate: float) -> dict[str, float]:
    """Open loop: completion i is written at start + i / rate, on a connection opened just before."""
    sent: dict[str, float] = {}
    statuses: list[int] = []
    start = time.perf_counter() + 0.2

    async def one(i: int, job_id: str, raw: bytes) -> None:
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter() - 0.005))
        reader, writer = await asyncio.open_connection(HOST, port)
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        sent[job_id] = time.time()  # the handler's stamp is wall-clock time in another process
        writer.write(raw)
        head = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(_content_length(head))
        statuses.append(int(head[9:12]))
        writer.close()

    await asyncio.gather(*(one(i, job_id, raw) for i, (job_id, raw) in enumerate(shots)))
    if set(statuses) != {200}:
        raise RuntimeError(f"completions answered {sorted(set(statuses))}, not only 200")
    return sent


def start_load(port: int, tokens: list[tuple[str, str]], generators: int, folder: Path) -> list[Any]:
    """The generators, sending each job's progress 1, 2, ... 99 (then the same reports again, which
    change nothing) until each is told to stop by a line on its stdin."""
    import pickle

    shares: list[list[bytes]] = [[] for _ in range(generators)]
    for i in range(len(tokens) * 99):
        token, provider_job_id = tokens[i % len(tokens)]
        percent = min(99, i // len(tokens) + 1)
        shares[i % generators].append(_request(port, token, provider_job_id, percent))
    processes = []
    ingest = Path(__file__).with_name("ingest.py")
    for g, shots in enumerate(shares):
        path = folder / f"load-{g}.pickle"
        path.write_bytes(pickle.dumps(shots))
        connections = str(32 // generators)
        command = [sys.executable, str(ingest), "--generate", str(port), str(path), connections, "--cycle"]
        processes.append(subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    for process in processes:
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("a load generator did not connect")
    for process in processes:
        process.stdin.write("go\n")
        process.stdin.flush()
    return processes


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def run(args: argparse.Namespace, url: str, folder: Path) -> None:
    loop = asyncio.get_running_loop()
    port = _free_port()
    calls, _ = await loop.create_datagram_endpoint(Calls, local_addr=(HOST, port))
    handler = f'[[handlers]]\nname = "stamp"\ntype = "latency:Stamp"\nport = {port}\n'
    bench = {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    target = start_receiver("receiver", url, folder, bench, config_text=handler)
    try:
        signer = WebhookSigner(SECRET)
        load_jobs = await make_jobs(url, 300)
        done_jobs = await make_jobs(url, 20 + args.unloaded + args.completions)
        load_tokens = [(signer.token(j, "apiframe"), p) for j, p in load_jobs]
        shots = [(j, completion(target.port, signer.token(j, "apiframe"), p)) for j, p in done_jobs]
        warm, quiet, shots = shots[:20], shots[20 : 20 + args.unloaded], shots[20 + args.unloaded :]
        await send_completions(target.port, warm, args.rate)  # warm-up: the worker is up and delivers
        await wait_for(lambda: all(j in Calls.called for j, _ in warm))
        unloaded = await send_completions(target.port, quiet, args.rate)  # the baseline: no load
        await wait_for(lambda: all(j in Calls.called for j in unloaded))
        loads = start_load(target.port, load_tokens, args.generators, folder)
        sent = await send_completions(target.port, shots, args.rate)
        await wait_for(lambda: all(j in Calls.called for j in sent))
        still_loaded = [p.poll() is None for p in loads]
        results = [stop_load(p) for p in loads]
    finally:
        target.process.terminate()
        target.process.wait(timeout=10)
        calls.close()
    non_200 = {code: n for r in results for code, n in r["non_200"].items()}
    n = sum(r["n"] for r in results)
    seconds = max(r["end"] for r in results) - min(r["start"] for r in results)
    print(f"ingest load: {n} progress webhooks at {n / seconds:.0f} req/s, non-200: {non_200 or 0}")
    print(f"load still running when the last handler was called: {all(still_loaded)}")
    print(f"{len(unloaded)} completions at {args.rate:g}/s without the load (the baseline):")
    quiet_p = report(unloaded)
    print(f"{len(sent)} completions at {args.rate:g}/s under that load:")
    loaded_p = report(sent)
    print(
        f"under the load / without: p50 {loaded_p[0] / quiet_p[0]:.1f}x, p99 {loaded_p[1] / quiet_p[1]:.1f}x"
        f" (goal: p99 under 50 ms under the load)"
    )
    if non_200 or not all(still_loaded):
        raise SystemExit("FAILED: the load answered other than 200, or a generator stopped before the end")


def report(sent: dict[str, float]) -> tuple[float, float]:
    """Print the completions' latency and its two parts; p50 and p99 of the whole, in ms."""
    parts = {
        "webhook to handler call": {j: Calls.called[j] - sent[j] for j in sent},
        "  request written to record begun": {j: Calls.recorded[j] - sent[j] for j in sent},
        "  record begun to handler call": {j: Calls.called[j] - Calls.recorded[j] for j in sent},
    }
    figures = []
    for name, seconds_of in parts.items():
        ms = [s * 1000 for s in seconds_of.values()]
        figures.append((pct(ms, 50), pct(ms, 99)))
        print(
            f"  {name + ':':36} p50 {pct(ms, 50):5.1f} ms, p90 {pct(ms, 90):5.1f} ms,"
            f" p99 {pct(ms, 99):5.1f} ms, max {max(ms):5.1f} ms"
        )
    return figures[0]


def stop_load(process: Any) -> dict[str, Any]:
    """Tell a cycling generator to stop; its figures. A generator that died fails the run here."""
    if process.poll() is None:
        process.stdin.write("stop\n")
        process.stdin.flush()
    out, _ = process.communicate(timeout=60)
    if process.returncode != 0 or not out.strip():
        raise SystemExit(f"FAILED: a load generator exited with {process.returncode}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


async def wait_for(predicate: Any) -> None:
    deadline = time.monotonic() + ARRIVAL_TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"events did not all arrive within {ARRIVAL_TIMEOUT:g} s")
        await asyncio.sleep(0.01)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--completions", type=int, default=300, help="completions sent under the load")
    parser.add_argument("--unloaded", type=int, default=100, help="completions sent before it, the baseline")
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--generators", type=int, default=2)
    parser.add_argument("--pg", nargs="?", const=PG_URL, help="on PostgreSQL (default URL: ingest.PG_URL)")
    args = parser.parse_args()
    print("command:", " ".join([".venv/bin/python", "bench/latency.py", *sys.argv[1:]]))
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs")
    folder = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    schema: tuple[str, str] | str | None = pg_schema(args.pg) if args.pg else None
    if isinstance(schema, str):
        raise SystemExit(f"PostgreSQL unusable: {schema}")
    url = schema[0] if schema else f"sqlite:///{folder / 'receiver.db'}"
    _use_uvloop()
    try:
        asyncio.run(run(args, url, folder))
    finally:
        if schema:
            drop_schema(args.pg, schema[1])
        shutil.rmtree(folder, ignore_errors=True)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
