"""The fault suite (`scripts/faults`): real `receiver serve` and `receiver worker` processes against both
provider emulators, on a SQLite file and on a private PostgreSQL cluster, through a bad day.

Faults, drawn from a seeded RNG (`--seed` replays the same plan; timing still varies):
- `kill -9` of a receiver process (the web process with its in-process worker, or the standalone
  worker) at random moments, restarted after a random pause;
- the private PostgreSQL cluster (initdb in a temporary folder, its own port) restarted mid-run;
- provider 5xx answers, timeouts (an answer held past the client's 30 s timeout, after the request took
  effect), malformed answers (cut-off JSON, after the request took effect) and 429 storms, on submits and
  status reads of both providers;
- Apiframe webhooks dropped, repeated, early (answered before the submit) and late;
- the handler's target (a `forward` to an inbox) down, answering 503, for a while.

Then the faults stop, every process is up again, and the run waits until every job is final and
delivered (or `--drain` seconds pass). The figures, per store and summed in the last line:
- faults: faults injected; jobs: jobs the receiver recorded for the run's submits;
- lost: jobs the provider made (its truth, read from the emulator) that did not reach a final status
  delivered to the handler (no receiver job, not final, or no event in the inbox), plus receiver jobs
  whose delivery went dead;
- duplicated-other: jobs for which the handler got two different events (different event ids), other
  than a failure the receiver declared for lack of knowledge (`timeout`, `submit_unknown`) followed by
  the provider's own final report, which is designed (counted as `superseded`);
- failed-by-us: jobs whose final status is `failed`/`canceled` while the provider's truth is succeeded,
  other than Runbase's `submit_unknown` (the submit's answer was lost; the run exists; the receiver does
  not resubmit blindly by design), counted and printed as `submit-unknown`;
- 5xx-unauthenticated: every 5xx answered to any request, authenticated or not: the run's own submits
  and reads, hostile unauthenticated requests sent throughout, and every webhook the emulator delivered,
  except 503s answered while the run had stopped the PostgreSQL server (counted as `503-store-down`:
  that answer is the documented "retry later") and a `POST /jobs` answered 502 naming the provider whose
  5xx it passes on after the client's retries (counted as `502-provider-refused`: the job was not made);
- secrets-in-logs: occurrences of a secret the run set (API keys, RECEIVER_SECRET, the admin token, the
  forward secret, every per-job webhook token) in any process's captured stdout/stderr.
The exit status is 1 when any of the last five is not zero.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.background import BackgroundServer
from receiver.emulators.apiframe import ApiframeEmulator
from receiver.emulators.runbase import RunbaseEmulator

ROOT = Path(__file__).resolve().parents[2]
APIFRAME_KEY = "afk_faults_8d1f0c2b7e"
RUNBASE_KEY = "rbk_faults_5a9e3c1d44"
RECEIVER_SECRET = "faults-receiver-secret-3f7b9a"
ADMIN = "faults-admin-token-c41e"
FORWARD_SECRET = "whsec_ZmF1bHRzLWZvcndhcmQtc2VjcmV0LWJ5dGVz"
HOLD = 35.0  # seconds an answer is held: past the provider client's 30 s timeout
RATE_LIMIT, RATE_WINDOW = 100, 10.0
RECEIVER_FAILURES = ("timeout", "submit_unknown")
PROVIDER_REFUSED = " (provider 5xx passed on)"
MUST_BE_ZERO = ("lost", "duplicated-other", "failed-by-us", "5xx-unauthenticated", "secrets-in-logs")


def scan_for_secrets(texts: dict[str, str], secrets: list[str]) -> list[tuple[str, str]]:
    """(name, secret) for every secret found in a named text; empty secrets are ignored."""
    return [(name, secret) for name, text in texts.items() for secret in secrets if secret and secret in text]


@dataclass
class Inbox:
    """The forward handler's target: records each event; answers 503 while `down_until` is ahead."""

    events: list[dict[str, Any]] = field(default_factory=list)
    down_until: float = 0.0
    refused: int = 0

    async def receive(self, request: Request) -> Response:
        if time.monotonic() < self.down_until:
            self.refused += 1
            return Response(status_code=503)
        try:
            body = await request.body()
        except ClientDisconnect:  # the sender was killed mid-request: nothing was delivered
            return Response(status_code=400)
        self.events.append(json.loads(body))
        return Response(status_code=200)


@dataclass
class Proc:
    """One receiver process, restartable; its output goes to numbered log files."""

    name: str
    args: list[str]
    env: dict[str, str]
    folder: Path
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0
    killed: bool = False  # the last end was our kill -9
    exits: int = 0  # ends that were not our kill: a crash, or a refusal to start

    def start(self) -> None:
        self.starts += 1
        self.killed = False
        log = (self.folder / f"{self.name}-{self.starts}.log").open("wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "receiver", *self.args], env=self.env, cwd=self.folder,
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.killed = True
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait()

    def working(self) -> bool:
        """Running and past its start (its start line printed): a kill now interrupts work."""
        if self.popen is None or self.popen.poll() is not None:
            return False
        log = self.folder / f"{self.name}-{self.starts}.log"
        return log.exists() and log.stat().st_size > 0

    def ensure_running(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            self.start()

    def supervise(self) -> None:
        """What a process supervisor does: start again a process that ended on its own (counted)."""
        if self.popen is not None and self.popen.poll() is not None and not self.killed:
            self.exits += 1
            self.start()

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Tally:
    faults: Counter[str] = field(default_factory=Counter)
    statuses: list[tuple[str, int, float]] = field(default_factory=list)  # (what, status, when) we got
    store_down: list[tuple[float, float]] = field(default_factory=list)  # monotonic windows
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answered(self, what: str, status: int) -> None:
        with self.lock:
            self.statuses.append((what, status, time.monotonic()))


class Run:
    """One store's run: emulators, inbox, processes, the fault plan, the figures."""

    def __init__(self, store: str, args: argparse.Namespace, rng: random.Random, folder: Path) -> None:
        self.store = store
        self.args = args
        self.rng = rng
        self.folder = folder
        self.tally = Tally()
        self.apiframe = ApiframeEmulator(
            api_key=APIFRAME_KEY, delay=1.0, failure_rate=0.1, credits=1e9, seed=rng.randrange(2**31)
        )
        self.runbase = RunbaseEmulator(
            api_key=RUNBASE_KEY, delay=1.0, failure_rate=0.1, rate_limit=RATE_LIMIT,
            rate_window=RATE_WINDOW, balance=1e9, seed=rng.randrange(2**31),
        )  # fmt: skip
        self.inbox = Inbox()
        self.cluster: Any = None
        self.procs: list[Proc] = []
        self.url = ""
        self.stop_faults = threading.Event()

    # -- setting up ----------------------------------------------------------------------------------

    def environment(self, database_url: str, inbox_url: str, af_url: str, rb_url: str) -> dict[str, str]:
        config = self.folder / "receiver.toml"
        config.write_text(
            '[[handlers]]\nname = "inbox"\ntype = "forward"\nurl = "${INBOX_URL}"\n'
            'secret = "${FORWARD_SECRET}"\nretry_base = 0.5\nretry_max = 3\nmax_attempts = 60\ntimeout = 10\n'
        )
        return {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(self.folder),
            "PYTHONPATH": str(ROOT),
            "RECEIVER_SECRET": RECEIVER_SECRET,
            "RECEIVER_PUBLIC_URL": self.url,
            "RECEIVER_DATABASE_URL": database_url,
            "RECEIVER_CONFIG": str(config),
            "RECEIVER_ADMIN_TOKEN": ADMIN,
            "RECEIVER_EXPECTED_SECONDS": "3",
            "RECEIVER_SUBMIT_LEASE": "20",
            "RECEIVER_JOB_TIMEOUT": "900",
            "RUNBASE_RATE_LIMIT": str(RATE_LIMIT),
            "RUNBASE_RATE_WINDOW": str(RATE_WINDOW),
            "APIFRAME_API_KEY": APIFRAME_KEY,
            "APIFRAME_BASE_URL": af_url,
            "RUNBASE_API_KEY": RUNBASE_KEY,
            "RUNBASE_BASE_URL": rb_url,
            "INBOX_URL": inbox_url,
            "FORWARD_SECRET": FORWARD_SECRET,
        }

    @contextmanager
    def database(self) -> Iterator[str]:
        if self.store == "sqlite":
            yield f"sqlite:///{self.folder / 'receiver.db'}"
            return
        from tests.support.pgcluster import private_cluster

        with private_cluster() as cluster:
            self.cluster = cluster
            yield cluster.url

    def run(self) -> dict[str, Any]:
        inbox_app = Starlette(routes=[Route("/in", self.inbox.receive, methods=["POST"])])
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        with ExitStack() as stack:
            af = stack.enter_context(BackgroundServer(self.apiframe.app))
            rb = stack.enter_context(BackgroundServer(self.runbase.app))
            inbox = stack.enter_context(BackgroundServer(inbox_app))
            database_url = stack.enter_context(self.database())
            env = self.environment(database_url, inbox.url + "/in", af.url, rb.url)
            self.procs = [
                Proc("serve", ["serve", "--port", str(port)], env, self.folder),
                Proc("worker", ["worker"], env, self.folder),
            ]
            stack.callback(lambda: [p.stop() for p in self.procs])
            for proc in self.procs:
                proc.start()
            self.wait_up(60)
            started = time.monotonic()
            faults = threading.Thread(target=self.inject_faults, daemon=True)
            hostile = threading.Thread(target=self.send_hostile, daemon=True)
            supervisor = threading.Thread(target=self.supervise, daemon=True)
            faults.start()
            hostile.start()
            supervisor.start()
            submitted = self.submit_all()
            self.stop_faults.set()
            faults.join()
            hostile.join()
            supervisor.join()
            self.calm()
            jobs = self.drain()
            figures = self.figures(jobs)
            figures["seconds"] = round(time.monotonic() - started, 1)
            for proc in self.procs:
                proc.stop()
            figures["secrets-in-logs"] = self.secrets_in_logs()
            figures["unanswered-submits"] = submitted.count(None)
            figures["exits-on-their-own"] = sum(proc.exits for proc in self.procs)
            return figures

    def wait_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"receiver serve not healthy within {timeout:g} s (logs in {self.folder})")

    # -- the load ------------------------------------------------------------------------------------

    def submit_all(self) -> list[str | None]:
        """Send the run's jobs, evenly over the fault window; each returns the job id or None when the
        answer was lost (the process died under it)."""
        count = self.args.jobs
        gap = self.args.window / count
        start = time.monotonic()
        providers = ["apiframe" if self.rng.random() < 0.5 else "runbase" for _ in range(count)]

        def one(n: int) -> str | None:
            time.sleep(max(0.0, start + n * gap - time.monotonic()))
            return self.submit(n, providers[n])

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(one, range(count)))

    def submit(self, n: int, provider: str) -> str | None:
        body = {"provider": provider, "prompt": f"faults {self.store} clip {n}", "metadata": {"n": str(n)}}
        headers = {"Authorization": f"Bearer {ADMIN}"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                answer = httpx.post(f"{self.url}/jobs", json=body, headers=headers, timeout=90)
            except httpx.ConnectError:  # not sent: the web process is down; send it again
                time.sleep(0.3)
                continue
            except httpx.TransportError:  # sent, answer lost: the job may exist; never send it twice
                return None
            refused = answer.status_code == 502 and "provider" in answer.json()
            self.tally.answered("POST /jobs" + (PROVIDER_REFUSED if refused else ""), answer.status_code)
            if answer.status_code == 503 and self.store_is_down():
                time.sleep(0.5)
                continue
            if answer.status_code == 202:
                job_id: str = answer.json()["id"]
                return job_id
            return None
        return None

    def supervise(self) -> None:
        while not self.stop_faults.wait(1.0):
            for proc in self.procs:
                proc.supervise()

    def send_hostile(self) -> None:
        """Unauthenticated and malformed requests throughout: none may be answered 5xx."""
        requests = [
            ("GET", "/jobs", {}, None),
            ("POST", "/jobs", {"Authorization": "Bearer wrong"}, b"{}"),
            ("POST", "/hooks/apiframe/not-a-token", {}, b'{"jobId": "x"}'),
            ("POST", "/hooks/runbase/abc.def", {}, b"[" * 5000),
            ("POST", "/jobs", {"Authorization": f"Bearer {ADMIN}"}, b'{"provider": "apiframe", "prompt": '),
            ("GET", "/jobs?limit=%C2%B2", {"Authorization": f"Bearer {ADMIN}"}, None),
        ]
        while not self.stop_faults.wait(0.5):
            method, path, headers, body = self.rng.choice(requests)
            try:
                answer = httpx.request(method, self.url + path, headers=headers, content=body, timeout=10)
            except httpx.TransportError:
                continue
            self.tally.answered(f"{method} {path.split('?')[0]} (hostile)", answer.status_code)

    # -- the faults ----------------------------------------------------------------------------------

    def plan(self) -> list[tuple[float, str]]:
        """(seconds from start, fault) for the whole window: the kills, the restarts, the rest."""
        window = self.args.window
        kills = [(self.rng.uniform(0.5, window), "kill") for _ in range(self.args.kills)]
        restarts = [(self.rng.uniform(window * 0.2, window * 0.8), "pg-restart") for _ in range(2)]
        others = (
            "apiframe-5xx", "runbase-5xx", "apiframe-429-storm", "runbase-429-storm", "apiframe-malformed",
            "runbase-malformed", "apiframe-timeout", "runbase-timeout", "webhooks-drop", "webhooks-repeat",
            "webhooks-early", "webhooks-late", "inbox-down",
        )  # fmt: skip
        plan = kills + (restarts if self.store == "postgres" else [])
        plan += [(self.rng.uniform(0.5, window), name) for name in others]  # each at least once
        plan += [(self.rng.uniform(0.5, window), self.rng.choice(others)) for _ in range(self.args.kills)]
        return sorted(plan)

    def inject_faults(self) -> None:
        start = time.monotonic()
        for at, fault in self.plan():
            if self.stop_faults.wait(max(0.0, start + at - time.monotonic())):
                return
            self.tally.faults[fault] += 1
            try:
                self.inject(fault)
            except Exception as exc:  # a fault that could not be made is reported, not fatal
                print(f"faults: could not inject {fault}: {exc}", file=sys.stderr)

    def inject(self, fault: str) -> None:
        rng = self.rng
        target, _, kind = fault.partition("-")
        emulator: Any = {"apiframe": self.apiframe, "runbase": self.runbase}.get(target)
        if fault == "kill":
            # A process that is still starting is let be: kills faster than a start would only keep the
            # receiver down, not catch it mid-work.
            deadline = time.monotonic() + 20
            while not any(p.working() for p in self.procs) and time.monotonic() < deadline:
                time.sleep(0.1)
            proc = rng.choice([p for p in self.procs if p.working()] or self.procs)
            proc.kill()
            threading.Timer(rng.uniform(0.0, 1.5), proc.ensure_running).start()
        elif fault == "pg-restart":
            down = time.monotonic()
            self.cluster.stop()
            time.sleep(rng.uniform(0.5, 2.5))
            self.cluster.start()
            with self.tally.lock:
                self.tally.store_down.append((down, time.monotonic() + 2.0))
        elif kind == "5xx":
            emulator.inject(rng.choice((500, 502, 503)), count=rng.randint(1, 3))
        elif kind == "429-storm":
            emulator.inject(429, seconds=rng.uniform(1.0, 4.0))
        elif kind == "malformed":
            emulator.inject_fault("malformed", count=rng.randint(1, 2))
        elif kind == "timeout":
            emulator.inject_fault("hang", hold=HOLD)
        elif target == "webhooks":
            mode = {"drop": "drop", "repeat": "duplicate", "early": "early", "late": "delay"}[kind]
            self.apiframe.configure(webhook=mode, webhook_delay=rng.uniform(2.0, 6.0))
            threading.Timer(rng.uniform(1.0, 4.0), lambda: self.apiframe.configure(webhook="deliver")).start()
        elif fault == "inbox-down":
            self.inbox.down_until = time.monotonic() + rng.uniform(2.0, 8.0)
        else:
            raise ValueError(f"unknown fault {fault}")

    def store_is_down(self, at: float | None = None, until: float | None = None) -> bool:
        """Whether the run had the server stopped at `at` (now by default), or at any moment from `at`
        to `until`: a request in flight when the server stopped may be answered 503 for it."""
        moment = time.monotonic() if at is None else at
        end = moment if until is None else until
        with self.tally.lock:
            return any(low <= end and moment <= high for low, high in self.tally.store_down)

    def calm(self) -> None:
        """The end of the faults: every process up, webhooks delivered, the inbox answering."""
        self.apiframe.configure(webhook="deliver")
        self.inbox.down_until = 0.0
        for proc in self.procs:
            proc.ensure_running()
        self.wait_up(60)

    # -- the outcome ---------------------------------------------------------------------------------

    def list_jobs(self) -> list[dict[str, Any]]:
        answer = httpx.get(
            f"{self.url}/jobs",
            params={"limit": 1000},
            headers={"Authorization": f"Bearer {ADMIN}"},
            timeout=30,
        )
        self.tally.answered("GET /jobs", answer.status_code)
        answer.raise_for_status()
        jobs: list[dict[str, Any]] = answer.json()["jobs"]
        return jobs

    def drain(self) -> list[dict[str, Any]]:
        """The jobs once every one is final and settled and the provider's jobs all have one; or as
        they stand after `--drain` seconds."""
        deadline = time.monotonic() + self.args.drain
        jobs: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            try:
                jobs = self.list_jobs()
            except httpx.HTTPError:
                time.sleep(1)
                continue
            prompts = {job["request"]["prompt"] for job in jobs}
            settled = all(
                job["status"] in ("succeeded", "failed", "canceled")
                and all(d["status"] in ("delivered", "dead") for d in job["deliveries"])
                for job in jobs
            )
            if settled and all(prompt in prompts for prompt, _ in self.provider_truth()):
                delivered = {event["job"]["id"] for event in self.inbox.events}
                if all(job["id"] in delivered or not job["deliveries"] for job in jobs):
                    return jobs
            time.sleep(1)
        return jobs

    def provider_truth(self) -> list[tuple[str, str]]:
        """(prompt, final status) of every job the providers made: succeeded or failed."""
        truth = [
            (job.input["prompt"], "failed" if job.fails else "succeeded")
            for job in list(self.apiframe.jobs.values())
        ]
        truth += [
            (run.input["prompt"], "failed" if run.fails else "succeeded")
            for run in list(self.runbase.runs.values())
        ]
        return truth

    def figures(self, jobs: list[dict[str, Any]]) -> dict[str, Any]:
        by_prompt: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for job in jobs:
            by_prompt[job["request"]["prompt"]].append(job)
        events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for event in self.inbox.events:
            events[event["job"]["id"]].append(event)
        lost: list[str] = []
        failed_by_us: list[str] = []
        submit_unknown = 0
        for prompt, truth in self.provider_truth():
            mine = by_prompt.get(prompt, [])
            if len(mine) != 1:
                lost.append(f"{prompt}: {len(mine)} receiver jobs")
                continue
            job = mine[0]
            if job["status"] not in ("succeeded", "failed", "canceled") or not events.get(job["id"]):
                lost.append(f"{prompt}: {job['id']} {job['status']}, {len(events.get(job['id'], []))} events")
            elif truth == "succeeded" and job["status"] != "succeeded":
                if (job["error"] or {}).get("code") == "submit_unknown" and job["provider"] == "runbase":
                    submit_unknown += 1
                else:
                    failed_by_us.append(f"{prompt}: {job['id']} {job['status']} {job['error']}")
        dead = [
            f"{job['id']} delivery dead"
            for job in jobs
            if any(d["status"] == "dead" for d in job["deliveries"])
        ]
        duplicated, superseded = [], 0
        for job_id, received in events.items():
            ids = list(dict.fromkeys(event["id"] for event in received))
            if len(ids) < 2:
                continue
            first = {e["id"]: e for e in received}
            ours = [first[i] for i in ids[:-1]]
            if all((e["job"]["error"] or {}).get("code") in RECEIVER_FAILURES for e in ours):
                superseded += 1
            else:
                duplicated.append(f"{job_id}: events {ids}")
        answered = [(what, status, self.store_is_down(at)) for what, status, at in self.tally.statuses]
        five = [
            (what, status)
            for what, status, down in answered
            if status >= 500 and not (status == 503 and down) and not what.endswith(PROVIDER_REFUSED)
        ]
        passed_on = sum(1 for what, _, _ in answered if what.endswith(PROVIDER_REFUSED))
        store_down = sum(1 for _, status, down in answered if status == 503 and down)
        hooks = [w for w in self.apiframe.webhooks_sent if w.get("status_code", 0) >= 500]
        hooks_down = [w for w in hooks if w["status_code"] == 503 and self.store_is_down(*self.in_flight(w))]
        five += [(self.webhook_timing(w), w["status_code"]) for w in hooks if w not in hooks_down]
        for name, items in (
            ("lost", lost + dead),
            ("failed-by-us", failed_by_us),
            ("duplicated", duplicated),
        ):
            for item in items[:10]:
                print(f"faults [{self.store}] {name}: {item}", file=sys.stderr)
        for what, status in five[:10]:
            print(f"faults [{self.store}] 5xx: {what} answered {status}", file=sys.stderr)
        return {
            "store": self.store,
            "faults": sum(self.tally.faults.values()),
            "jobs": len(jobs),
            "lost": len(lost) + len(dead),
            "duplicated-other": len(duplicated),
            "failed-by-us": len(failed_by_us),
            "5xx-unauthenticated": len(five),
            "submit-unknown": submit_unknown,
            "superseded": superseded,
            "502-provider-refused": passed_on,
            "503-store-down": store_down + len(hooks_down),
            "kills": self.tally.faults["kill"],
            "provider-jobs": len(self.provider_truth()),
            "provider-failed": sum(truth == "failed" for _, truth in self.provider_truth()),
            "duplicate-posts": sum(len(e) for e in events.values())
            - sum(len({x["id"] for x in e}) for e in events.values()),
            "inbox-refused": self.inbox.refused,
            "fault-kinds": dict(sorted(self.tally.faults.items())),
        }

    def webhook_timing(self, webhook: dict[str, Any]) -> str:
        """A webhook attempt, with how long it was in flight and when the run stopped the server."""
        sent, answered = self.in_flight(webhook)
        with self.tally.lock:
            spans = ", ".join(
                f"{low - sent:+.1f}..{high - sent:+.1f} s" for low, high in self.tally.store_down
            )
        return (
            f"webhook (in flight {answered - sent:.1f} s; server stopped, from its send: {spans or 'never'})"
        )

    @staticmethod
    def in_flight(webhook: dict[str, Any]) -> tuple[float, float]:
        """When a webhook attempt was sent and answered: the emulators run on the system clock, so its
        `t` and `answered` are time.monotonic() readings."""
        return float(webhook["t"]), float(webhook["answered"])

    def secrets_in_logs(self) -> int:
        tokens = [
            job.webhook_url.rsplit("/", 1)[-1] for job in self.apiframe.jobs.values() if job.webhook_url
        ]
        secrets = [APIFRAME_KEY, RUNBASE_KEY, RECEIVER_SECRET, ADMIN, FORWARD_SECRET, *tokens]
        texts = {path.name: path.read_text(errors="replace") for path in sorted(self.folder.glob("*.log"))}
        found = scan_for_secrets(texts, secrets)
        for name, secret in found[:10]:
            print(f"faults [{self.store}] secret in {name}: {secret[:4]}...", file=sys.stderr)
        return len(found)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/faults", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, help="replay a run's fault plan (default: a new seed, printed)")
    parser.add_argument(
        "--jobs", type=int, default=240, help="submits per store (default 240: some die with the process)"
    )
    parser.add_argument("--kills", type=int, default=20, help="kill -9s per store (default 20)")
    parser.add_argument("--window", type=float, default=40.0, help="seconds of faults and submits per store")
    # An Apiframe job whose webhook was dropped is found by the reconciliation poll, 1.2 x the learned
    # p99 after its submit: with the faults' stalls in the history that is minutes, more on a busy
    # machine. The wait ends as soon as every job has settled.
    parser.add_argument("--drain", type=float, default=360.0, help="seconds to wait for the jobs to settle")
    parser.add_argument(
        "--stores", default="sqlite,postgres", help="comma-separated: sqlite, postgres (default both)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the logs folder")
    args = parser.parse_args(argv)
    stores = args.stores.split(",")
    if not stores or any(s not in ("sqlite", "postgres") for s in stores):
        parser.error("--stores takes sqlite, postgres or both")
    if args.jobs < 1 or args.kills < 0 or args.window <= 0 or args.drain <= 0:
        parser.error("--jobs must be at least 1, --kills at least 0, --window and --drain above 0")
    args.stores = stores
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    print(f"faults: seed {seed} (replay with --seed {seed})", flush=True)
    rng = random.Random(seed)  # a fault plan, not cryptography
    folder = Path(tempfile.mkdtemp(prefix="receiver-faults-"))
    started = time.monotonic()
    results = []
    try:
        for store in args.stores:
            store_folder = folder / store
            store_folder.mkdir()
            figures = Run(store, args, rng, store_folder).run()
            print(f"faults [{store}]: {json.dumps(figures)}", flush=True)
            results.append(figures)
    finally:
        if args.keep:
            print(f"faults: logs kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    total = {name: sum(r[name] for r in results) for name in ("faults", "jobs", *MUST_BE_ZERO)}
    print(
        f"faults: {round(time.monotonic() - started)} s; submit-unknown {sum(r['submit-unknown'] for r in results)},"
        f" superseded {sum(r['superseded'] for r in results)}, 503-store-down"
        f" {sum(r['503-store-down'] for r in results)}, kills {sum(r['kills'] for r in results)}"
    )
    print(", ".join(f"{name} {total[name]}" for name in ("faults", "jobs", *MUST_BE_ZERO)), flush=True)
    return 1 if any(total[name] for name in MUST_BE_ZERO) else 0


if __name__ == "__main__":
    raise SystemExit(main())
