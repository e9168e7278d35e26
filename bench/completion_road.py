"""A completion's road in one process, from `Receiver.record` to its handler's call, against the record alone.

    .venv/bin/python bench/completion_road.py [--completions 500] [--pg URL]

A `Receiver` on SQLite (a temporary folder) and on PostgreSQL (a fresh schema, dropped afterwards;
skipped, with the reason, when the server cannot be reached), with one handler that notes when it is
called. Each run ends `--completions` submitted Apiframe jobs one at a time, as webhooks would (the job's
record, then a pause of 5 ms), and counts the store's statements by name from the first record until the
last delivery's outcome is stored, and the CPU the process spent meanwhile.

- `road`: the worker loop runs in this process, as under `receiver serve`: the record, the hand-off
  to the worker, the handler's call and the delivery's outcome, and whatever the loop does meanwhile
  (its wake-ups, its safety-net rounds).
- `record alone`, the baseline in the same run: the same records with no worker (as `serve --no-worker`
  makes them), so the least any design must do: the job's end and its delivery row, committed.

Printed per store: statements per completion, CPU per completion, and the record's and the road's
median and p90 in ms (the road's to the handler's call), each beside the record alone's, as a ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from ingest import PG_URL, drop_schema, pg_schema

import receiver.store.sqlstore as sqlstore
from handlers import HandlerSpec
from receiver.config import Settings
from receiver.events import Job, JobStatus, new_job_id
from receiver.service import Receiver
from receiver.store import Update

GAP = 0.005  # seconds between completions: one at a time, as a trickle of webhooks
DONE = Update(JobStatus.SUCCEEDED, output_urls=("https://cdn.example.com/v.mp4",))
STATEMENTS: Counter[str] = Counter()


def _counting() -> None:
    """Count every statement the SQL store builds (each is sent once), by query name."""
    bind = sqlstore.SQLStore._q

    def counted(self: Any, name: str, **params: Any) -> Any:
        STATEMENTS[name] += 1
        return bind(self, name, **params)

    sqlstore.SQLStore._q = counted  # type: ignore[method-assign]


class Stamp:
    """The handler: notes when it is called, per job, and tells whoever waits for that job."""

    def __init__(self) -> None:
        self.called: dict[str, float] = {}
        self.waiting: dict[str, asyncio.Event] = {}

    async def handle(self, event: dict[str, Any]) -> None:
        job_id = event["job"]["id"]
        self.called[job_id] = time.perf_counter()
        self.waiting.setdefault(job_id, asyncio.Event()).set()

    async def wait(self, job_id: str) -> float:
        await self.waiting.setdefault(job_id, asyncio.Event()).wait()
        return self.called[job_id]


@dataclass
class Figures:
    statements: Counter[str]
    cpu_ms: float  # per completion
    record_ms: list[float]
    call_ms: list[float]  # record began -> handler called (the road only)


@asynccontextmanager
async def _receiver(url: str, stamp: Stamp) -> AsyncIterator[Receiver]:
    settings = replace(
        Settings(), secret="s" * 32, database_url=url, handlers=[{"name": "stamp", "type": "log"}]
    )
    receiver = Receiver.from_settings(settings)
    spec: HandlerSpec = replace(receiver.specs[0], handler=stamp)
    receiver.specs, receiver.by_name = [spec], {spec.name: spec}
    await receiver.open()
    try:
        yield receiver
    finally:
        await receiver.close()


async def _jobs(receiver: Receiver, count: int) -> list[str]:
    now = datetime.now(UTC)
    ids = []
    for _ in range(count):
        job = Job(id=new_job_id(), provider="apiframe", status=JobStatus.PENDING, request={}, created_at=now)
        await receiver.store.create_job(job, now + timedelta(hours=2))
        await receiver.store.mark_submitted(job.id, str(uuid.uuid4()), now, now + timedelta(hours=1))
        ids.append(job.id)
    return ids


async def _run(url: str, count: int, road: bool) -> Figures:
    stamp = Stamp()
    async with _receiver(url, stamp) as receiver:
        ids = await _jobs(receiver, count)
        stop = asyncio.Event()
        loop = asyncio.create_task(receiver.worker.run(stop)) if road else None
        await asyncio.sleep(0.5)  # the loop's first round is over, and on PostgreSQL it listens
        STATEMENTS.clear()
        records, calls = [], []
        cpu = time.process_time()
        for job_id in ids:
            began = time.perf_counter()
            await receiver.record(job_id, DONE, "webhook")
            records.append((time.perf_counter() - began) * 1000)
            if road:
                calls.append((await stamp.wait(job_id) - began) * 1000)
            await asyncio.sleep(GAP)
        if loop is not None:
            stop.set()
            await loop  # once the deliveries it started have stored their outcome
        cpu_ms = (time.process_time() - cpu) * 1000 / count
        statements = Counter(STATEMENTS)
    return Figures(statements, cpu_ms, records, calls)


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} / {statistics.quantiles(values, n=10)[-1]:6.2f}"


async def _store(name: str, url: str, count: int) -> None:
    alone = await _run(url, count, road=False)
    road = await _run(url, count, road=True)
    per = {label: sum(f.statements.values()) / count for label, f in (("alone", alone), ("road", road))}
    print(f"\n{name}: {count} completions")
    ratio = per["road"] / per["alone"]
    print(
        f"  statements per completion: road {per['road']:.2f}, record alone {per['alone']:.2f} ({ratio:.2f}x)"
    )
    for label, figures in (("road", road), ("record alone", alone)):
        named = ", ".join(f"{n} {c / count:.2f}" for n, c in figures.statements.most_common())
        print(f"    {label}: {named}")
    ratio = road.cpu_ms / alone.cpu_ms
    print(
        f"  CPU per completion: road {road.cpu_ms:.2f} ms, record alone {alone.cpu_ms:.2f} ms ({ratio:.2f}x)"
    )
    print(f"  record, p50 / p90 ms: road {_ms(road.record_ms)}, record alone {_ms(alone.record_ms)}")
    ratio = statistics.median(road.call_ms) / statistics.median(alone.record_ms)
    print(
        f"  record began -> handler called, p50 / p90 ms: {_ms(road.call_ms)} ({ratio:.2f}x the record alone)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--completions", type=int, default=500)
    parser.add_argument("--pg", default=PG_URL)
    args = parser.parse_args()
    print("command:", " ".join([".venv/bin/python", *sys.argv]))
    _counting()
    with tempfile.TemporaryDirectory() as folder:
        await _store("SQLite", f"sqlite:///{folder}/receiver.db", args.completions)
    scoped = pg_schema(args.pg)
    if isinstance(scoped, str):
        print(f"\nPostgreSQL skipped: {scoped}")
        return
    url, schema = scoped
    try:
        await _store("PostgreSQL", url, args.completions)
    finally:
        drop_schema(args.pg, schema)


if __name__ == "__main__":
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(main())
