"""How soon polling sees a finished Runbase video, and what it spends: the receiver's worker against three
simple loops, on a virtual clock.

    .venv/bin/python bench/polling.py [--sigma 0.25 0.5] [--seed 1] [--jobs 200] [--only receiver fixed]
        [--at-once 1 2 10 50 200] [--streams 2 10 50]

Each run starts from an empty store. Jobs' completion times are lognormal (median 150 s, `--sigma`);
they are submitted all at once (N = 1, 2, 10, 50, 200) or as a steady stream (one every 150/n s, 3n
jobs, so n are in flight on average). A batch of 2 and a stream of 2 show what the receiver spends on
the commonest small cases: jobs submitted together are a batch to it, a job every 75 s is not. Four
pollers, each on its own fresh run:
- `receiver`: the real `Worker.run` loop of a `Receiver` on SQLite, with its `StoreBudget`, submitting
  through `Receiver.submit` (queued submits go out from the worker);
- `naive 2s`: the seed's loop, every open job every 2 s, no budget;
- `fixed`: every open job every max(2 s, n x window/limit) (n: the jobs at once, or the stream's n),
  one request every window/limit s at most (submits first), so it respects the 20/10 s budget;
- `round robin`: every request the budget allows (one every window/limit s, submits first) to the open
  job looked at longest ago. It knows nothing of completion times and spends every slot. Where the
  jobs are alike (10 at once: submitted within 5 s, one distribution), no poller that treats them
  alike sees them sooner on average: there it is the bound for the receiver's p50. Where they are
  not (50 and 200 at once take 25 and 100 s to submit; the streams), it shows what knowing the
  completion times is worth beside spending every slot.

The provider is the project's Runbase emulator (receiver/emulators/runbase.py), in this process behind
`httpx.ASGITransport`, on the same VirtualClock, each answer 0.2 s after its request arrived; each run's
completion time is set from the lognormal draw when its submit is answered. The emulator's own limit is
lifted: a request is counted "over budget" here when, as it arrives, 20 others arrived in the 10 s
before it (the emulator's sliding window). Time moves only when every task waits on the clock: the
driver advances it to the earliest sleeper, so a run of minutes of virtual time takes about a second.

Figures per row: polls per job (status reads, the one that saw the end included), requests over
budget (summed over the runs of a row), and the delay from the moment the video was ready to the
moment the poller recorded it, p50 and p95 in seconds; a case with fewer than `--jobs` jobs runs
again, each time from an empty store, until it has them. Completion times and ids (they break ties)
come from `--seed`: a run repeats, and every poller of a row gets the same completion times run by
run. A p50 over 200 jobs moves by about 0.15 s from one draw to the next, so each p50 / fixed's and
the receiver's polls and p50 carry a 90 % interval: the paired bootstrap over the row's jobs (jobs
drawn with replacement, each with the fixed loop's job of the same completion time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import secrets
import shlex
import statistics
import sys
import tempfile
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import structlog

from receiver.clock import VirtualClock
from receiver.config import Settings
from receiver.emulators.runbase import RunbaseEmulator
from receiver.events import TERMINAL
from receiver.generation import KlingRequest
from receiver.providers.ratelimit import StoreBudget
from receiver.providers.runbase import RunbaseClient
from receiver.service import Receiver
from receiver.store import open_store

MEDIAN = 150.0
LATENCY = 0.2
LIMIT, WINDOW = 20, 10.0
KEY = "rb_bench_key"
AT_ONCE = (1, 2, 10, 50, 200)
STREAMS = (2, 10, 50)
POLLERS = ("receiver", "naive 2s", "fixed", "round robin")
JOBS_PER_ROW = 200  # a case with fewer jobs runs again (each run from an empty store) until it has these
RESAMPLES = 1000  # bootstrap draws for a 90 % interval


@dataclass
class Provider:
    """The emulator behind a transport that adds the answer latency and counts what the provider sees."""

    clock: VirtualClock
    draws: random.Random
    sigma: float
    emulator: RunbaseEmulator = field(init=False)
    arrivals: deque[float] = field(default_factory=deque)  # the last WINDOW s of arrivals
    over_budget: int = 0
    polls: dict[str, int] = field(default_factory=dict)
    ready: dict[str, float] = field(default_factory=dict)  # run id -> monotonic time it finished
    seen: dict[str, float] = field(default_factory=dict)  # run id -> when a poll first answered final

    def __post_init__(self) -> None:
        self.emulator = RunbaseEmulator(
            api_key=KEY, rate_limit=10**9, balance=1e9, clock=self.clock, seed=1, delay=MEDIAN
        )
        self.inner = httpx.ASGITransport(app=self.emulator.app)

    def transport(self) -> httpx.AsyncBaseTransport:
        provider = self

        class Transport(httpx.AsyncBaseTransport):
            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                return await provider.handle(request)

        return Transport()

    async def handle(self, request: httpx.Request) -> httpx.Response:
        now = self.clock.monotonic()
        while self.arrivals and self.arrivals[0] <= now - WINDOW:
            self.arrivals.popleft()
        if len(self.arrivals) >= LIMIT:
            self.over_budget += 1
        self.arrivals.append(now)
        answer = await self.inner.handle_async_request(request)
        body = await answer.aread()
        data = json.loads(body)
        if request.method == "POST" and answer.status_code == 201:
            run = self.emulator.runs[data["id"]]
            run.delay = MEDIAN * math.exp(self.sigma * self.draws.gauss(0.0, 1.0))
            self.ready[run.id] = run.started + run.delay
            self.polls[run.id] = 0
        elif request.method == "GET":
            run_id = request.url.path.rsplit("/", 1)[-1]
            self.polls[run_id] += 1
        await self.clock.sleep(LATENCY)
        if request.method == "GET" and data.get("status") in ("succeeded", "failed"):
            self.seen.setdefault(run_id, self.clock.monotonic())
        return httpx.Response(answer.status_code, headers=answer.headers, content=body)


def seeded_ids(seed: float) -> None:
    """Job, run and request ids from a seeded generator: ids break ties (jobs due at the same moment,
    equal chances), so with random ones two runs of the same seed differ."""
    ids = random.Random(seed)
    secrets.token_hex = lambda nbytes=None: ids.getrandbits(8 * (nbytes or 32)).to_bytes(nbytes or 32).hex()


def arrival_times(shape: str, n: int) -> list[float]:
    if shape == "at once":
        return [0.0] * n
    return [i * MEDIAN / n for i in range(3 * n)]


async def drive(clock: VirtualClock, finished: Callable[[], bool], limit: float = 20000.0) -> None:
    """Move virtual time to the next sleeper each time every other task waits, until `finished`."""
    loop = asyncio.get_running_loop()
    while not finished():
        while True:
            await asyncio.sleep(0)
            if not loop._ready:  # type: ignore[attr-defined]  # nothing else can run: all wait
                break
        if finished():
            return
        sleepers = clock.sleepers
        if not sleepers or clock.monotonic() > limit:
            raise RuntimeError(f"stuck at {clock.monotonic():.1f} s with {len(sleepers)} sleepers")
        clock.advance_to(sleepers[0])


async def run_receiver(provider: Provider, arrivals: list[float], folder: Path) -> dict[str, float]:
    clock = provider.clock
    settings = Settings(runbase_api_key=KEY, database_url=f"sqlite:///{folder / 'bench.db'}")
    store = open_store(settings.database_url)
    budget = StoreBudget(store, settings.runbase_rate_limit, settings.runbase_rate_window, clock=clock)
    transport = provider.transport()
    client = RunbaseClient(KEY, "http://runbase.bench", budget=budget, transport=transport, clock=clock)
    receiver = Receiver(settings, store, [], clients={"runbase": client}, budget=budget, clock=clock)
    await receiver.open()
    stop = asyncio.Event()
    worker = asyncio.create_task(receiver.worker.run(stop))
    job_ids: list[str] = []

    async def submit_at(at: float) -> None:
        await clock.sleep(at - clock.monotonic())
        job = await receiver.submit("runbase", KlingRequest(prompt="a red fox in snow"))
        job_ids.append(job.id)

    submits = [asyncio.create_task(submit_at(at)) for at in arrivals]
    recorded: dict[str, float] = {}

    def finished() -> bool:
        return len(provider.seen) == len(arrivals)

    # Once every final answer has arrived and every task waits again, the worker has recorded them.
    await drive(clock, finished)
    assert all(task.done() for task in submits)
    for job_id in job_ids:
        job = await receiver.store.get_job(job_id)
        assert job is not None
        assert job.completed_at is not None
        recorded[job.provider_job_id or ""] = (job.completed_at - clock.start).total_seconds()
    stop.set()
    await drive(clock, worker.done)
    await receiver.close()
    return recorded


async def run_naive(provider: Provider, arrivals: list[float]) -> dict[str, float]:
    clock = provider.clock
    client = RunbaseClient(KEY, "http://runbase.bench", transport=provider.transport(), clock=clock)
    open_runs: set[str] = set()
    seen: dict[str, float] = {}

    async def submit_at(at: float) -> None:
        await clock.sleep(at - clock.monotonic())
        status = await client.submit("bench", KlingRequest(prompt="a red fox in snow"))
        open_runs.add(status.provider_job_id or "")

    async def poll(run_id: str) -> None:
        status = await client.get_status(run_id)
        if status.status in TERMINAL and run_id in open_runs:
            open_runs.discard(run_id)
            seen[run_id] = clock.monotonic()

    async def loop() -> None:
        while len(seen) < len(arrivals):
            await clock.sleep(2.0)
            await asyncio.gather(*(poll(run_id) for run_id in list(open_runs)))

    tasks = [asyncio.create_task(submit_at(at)) for at in arrivals] + [asyncio.create_task(loop())]
    await drive(clock, lambda: all(task.done() for task in tasks))
    await client.aclose()
    return seen


async def run_paced(provider: Provider, arrivals: list[float], interval: float) -> dict[str, float]:
    """One request per window/limit s (submits first) to the open job due longest ago, each due
    `interval` s after its last look was sent: the fixed loop, or with 0 the round robin."""
    clock = provider.clock
    client = RunbaseClient(KEY, "http://runbase.bench", transport=provider.transport(), clock=clock)
    spacing = WINDOW / LIMIT + 0.01
    to_submit: deque[float] = deque(sorted(arrivals))
    due: dict[str, float] = {}  # open run -> when it is next polled
    seen: dict[str, float] = {}

    async def submit() -> None:
        status = await client.submit("bench", KlingRequest(prompt="a red fox in snow"))
        due[status.provider_job_id or ""] = clock.monotonic() + interval

    async def poll(run_id: str) -> None:
        status = await client.get_status(run_id)
        if status.status in TERMINAL:
            seen[run_id] = clock.monotonic()
            due.pop(run_id, None)
        else:
            due[run_id] = clock.monotonic() - LATENCY + interval

    async def pacer() -> None:
        running: list[Awaitable[None]] = []
        while len(seen) < len(arrivals):
            now = clock.monotonic()
            if to_submit and to_submit[0] <= now:
                to_submit.popleft()
                running.append(asyncio.create_task(submit()))
            else:
                ready = [run_id for run_id, at in due.items() if at <= now]
                if ready:
                    run_id = min(ready, key=due.__getitem__)
                    due[run_id] = math.inf  # in flight
                    running.append(asyncio.create_task(poll(run_id)))
            await clock.sleep(spacing)
        await asyncio.gather(*running)

    task = asyncio.create_task(pacer())
    await drive(clock, task.done)
    await client.aclose()
    return seen


@dataclass(frozen=True)
class Job:
    """One job of a row: the delay from its video to the poller's record, and its polls."""

    delay: float
    polls: int


@dataclass
class Row:
    poller: str
    shape: str
    n: int
    over: int
    jobs: list[Job]  # run by run, each run's in the order its submits were answered (its draws' order)

    @property
    def polls(self) -> float:
        return _polls(self.jobs)

    @property
    def p50(self) -> float:
        return _p50(self.jobs)

    @property
    def p95(self) -> float:
        return _quantile([job.delay for job in self.jobs], 0.95)


def _polls(jobs: list[Job]) -> float:
    return statistics.fmean(job.polls for job in jobs)


def _p50(jobs: list[Job]) -> float:
    return _quantile([job.delay for job in jobs], 0.5)


def interval(
    figure: Callable[[list[Job], list[Job]], float], jobs: list[Job], paired: list[Job]
) -> tuple[float, float]:
    """The 90 % interval of `figure(jobs, paired)` by the paired bootstrap: jobs drawn with replacement,
    each with the job of `paired` that had the same completion time (the same place in the same run)."""
    draws = random.Random(0)
    count = min(len(jobs), len(paired))
    values = []
    for _ in range(RESAMPLES):
        picked = [draws.randrange(count) for _ in range(count)]
        values.append(figure([jobs[i] for i in picked], [paired[i] for i in picked]))
    return _quantile(values, 0.05), _quantile(values, 0.95)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def one(poller: str, shape: str, n: int, sigma: float, seed: int, jobs: int) -> Row:
    """Runs of the case until at least `jobs` jobs were measured, each from an empty store."""
    draws = random.Random(f"{seed}-{shape}-{n}-{sigma}")
    measured: list[Job] = []
    over = 0
    while len(measured) < jobs:
        seeded_ids(draws.random())
        clock = VirtualClock()
        provider = Provider(clock, draws, sigma)
        arrivals = arrival_times(shape, n)
        with tempfile.TemporaryDirectory() as folder:
            if poller == "receiver":
                seen = await run_receiver(provider, arrivals, Path(folder))
            elif poller == "naive 2s":
                seen = await run_naive(provider, arrivals)
            else:
                every = max(2.0, n * WINDOW / LIMIT) if poller == "fixed" else 0.0
                seen = await run_paced(provider, arrivals, every)
        measured += [
            Job(seen[run_id] - ready, provider.polls[run_id]) for run_id, ready in provider.ready.items()
        ]
        over += provider.over_budget
    return Row(poller, shape, n, over, measured)


def table(rows: list[Row], sigma: float) -> str:
    """The rows, each receiver figure with its 90 % interval, p50 / fixed's paired with the fixed loop
    of the same row."""
    lines = [
        f"sigma {sigma:g} | poller | polls/job | over budget | p50 delay | p95 delay | p50 / fixed's",
        "|".join(["---"] * 7),
    ]
    fixed = {(r.shape, r.n): r.jobs for r in rows if r.poller == "fixed"}
    for r in rows:
        polls, p50 = f"{r.polls:.1f}", f"{r.p50:.2f} s"
        if r.poller == "receiver":
            low, high = interval(lambda jobs, _: _polls(jobs), r.jobs, r.jobs)
            polls += f" ({low:.1f}-{high:.1f})"
            low, high = interval(lambda jobs, _: _p50(jobs), r.jobs, r.jobs)
            p50 += f" ({low:.2f}-{high:.2f})"
        ratio = "-"
        if (base := fixed.get((r.shape, r.n))) and r.poller != "fixed":
            ratio = f"{r.p50 / _p50(base):.2f}"
            low, high = interval(lambda jobs, paired: _p50(jobs) / _p50(paired), r.jobs, base)
            ratio += f" ({low:.2f}-{high:.2f})"
        elif base:
            ratio = "1.00"
        lines.append(f"{r.shape} {r.n} | {r.poller} | {polls} | {r.over} | {p50} | {r.p95:.1f} s | {ratio}")
    return "\n".join("| " + line + " |" for line in lines)


async def main(args: argparse.Namespace) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(50))
    cases = [("at once", n) for n in args.at_once] + [("stream", n) for n in args.streams]
    print("$ " + shlex.join([".venv/bin/python", "bench/polling.py", *sys.argv[1:]]))
    for sigma in args.sigma:
        rows = [
            await one(poller, shape, n, sigma, args.seed, args.jobs)
            for shape, n in cases
            for poller in args.only or POLLERS
        ]
        print()
        print(table(rows, sigma), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sigma", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", nargs="+", choices=POLLERS)
    parser.add_argument(
        "--at-once", type=int, nargs="*", default=list(AT_ONCE), help="jobs submitted together"
    )
    parser.add_argument(
        "--streams", type=int, nargs="*", default=list(STREAMS), help="jobs in flight on average"
    )
    parser.add_argument(
        "--jobs", type=int, default=JOBS_PER_ROW, help="jobs measured per row (runs of the case)"
    )
    asyncio.run(main(parser.parse_args()))
