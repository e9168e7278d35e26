"""`receiver demo`: both emulators, a receiver on a temporary SQLite file, one job per provider, their
completions by webhook and by polling, delivered to local handlers, and a summary. Leaves nothing running."""

from __future__ import annotations

import base64
import contextlib
import hmac
import secrets
import sqlite3
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Column, Table
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from handlers.forward import secret_key, sign
from receiver.app import create_app
from receiver.background import BackgroundServer
from receiver.config import Settings
from receiver.emulators.apiframe import ApiframeEmulator
from receiver.emulators.runbase import RunbaseEmulator
from receiver.events import TERMINAL, parse_iso
from receiver.providers import apiframe, runbase
from receiver.service import Receiver

EMULATOR_DELAY = 4.0
DEADLINE = 50.0
PROMPTS = {
    apiframe.PROVIDER: "a cinematic sunrise over a futuristic cityscape, smooth camera push-in",
    runbase.PROVIDER: "a ceramic lamp on an oak table, slow orbit, soft studio light",
}


class ForwardInbox:
    """The demo's receiving end for the `forward` handler: checks each Standard Webhooks signature."""

    def __init__(self, secret: str) -> None:
        self.key = secret_key(secret)
        self.received: list[dict[str, Any]] = []
        self.app = Starlette(routes=[Route("/events", self.receive, methods=["POST"])])

    async def receive(self, request: Request) -> Response:
        body = await request.body()
        msg_id = request.headers.get("webhook-id", "")
        timestamp = int(request.headers.get("webhook-timestamp", "0"))
        expected = sign(self.key, msg_id, timestamp, body)
        ok = hmac.compare_digest(expected, request.headers.get("webhook-signature", ""))
        self.received.append({"id": msg_id, "verified": ok})
        return JSONResponse({"ok": ok}, status_code=200 if ok else 401)


def run(keep: str | None = None) -> int:
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)  # piped or captured: no terminal width to honour
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        return _run(Path(keep), console, kept=True)
    with tempfile.TemporaryDirectory(prefix="receiver-demo-") as tmp:
        return _run(Path(tmp), console, kept=False)


def _run(folder: Path, console: Console, *, kept: bool) -> int:
    forward_secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    admin_token = secrets.token_urlsafe(16)
    inbox = ForwardInbox(forward_secret)
    apiframe_emulator = ApiframeEmulator(delay=EMULATOR_DELAY, seed=1)
    runbase_emulator = RunbaseEmulator(delay=EMULATOR_DELAY, seed=1)
    videos, table_db = folder / "videos", folder / "events.db"
    with (
        BackgroundServer(apiframe_emulator.app) as apiframe_server,
        BackgroundServer(runbase_emulator.app) as runbase_server,
        BackgroundServer(inbox.app) as inbox_server,
    ):
        receiver_server = BackgroundServer()
        settings = replace(
            Settings(),
            secret=secrets.token_urlsafe(32),
            admin_token=admin_token,
            public_url=receiver_server.url,
            database_url=f"sqlite:///{folder / 'receiver.db'}",
            apiframe_api_key="afk_demo",
            apiframe_base_url=apiframe_server.url,
            runbase_api_key="rb_demo",
            runbase_base_url=runbase_server.url,
            expected_seconds=EMULATOR_DELAY,
            handlers=[
                {"name": "log", "type": "log"},
                # The emulators serve the videos from this machine: allow the loopback address.
                {
                    "name": "store-videos",
                    "type": "storage",
                    "target": str(videos),
                    "allow_private_hosts": True,
                },
                {"name": "events-table", "type": "database", "url": f"sqlite:///{table_db}"},
                {
                    "name": "forward",
                    "type": "forward",
                    "url": f"{inbox_server.url}/events",
                    "secret": forward_secret,
                },
            ],
        )
        receiver_server.app = create_app(Receiver.from_settings(settings))
        with receiver_server:
            console.print(
                f"[bold]receiver[/] on {receiver_server.url}, emulators on {apiframe_server.url} "
                f"(Apiframe) and {runbase_server.url} (Runbase)"
            )
            jobs = _submit_and_follow(receiver_server.url, admin_token, console)
    _summary(console, jobs, inbox, videos, table_db, kept)
    ok = all(j["status"] == "succeeded" for j in jobs) and all(r["verified"] for r in inbox.received)
    return 0 if ok else 1


def _submit_and_follow(url: str, admin_token: str, console: Console) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {admin_token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        ids = []
        for provider, prompt in PROMPTS.items():
            answer = http.post(
                "/jobs", json={"provider": provider, "prompt": prompt, "metadata": {"demo": "yes"}}
            )
            answer.raise_for_status()
            ids.append(answer.json()["id"])
            console.print(f"submitted {answer.json()['id']} to {provider}")
        deadline = time.monotonic() + DEADLINE
        while True:
            jobs = [http.get(f"/jobs/{job_id}").json() for job_id in ids]
            if all(_finished(j) for j in jobs) or time.monotonic() > deadline:
                return jobs
            time.sleep(0.2)  # waiting on another thread's progress, read through the admin API


def _finished(job: dict[str, Any]) -> bool:
    return job["status"] in set(TERMINAL) and all(
        d["status"] in ("delivered", "dead") for d in job["deliveries"]
    )


def _summary(
    console: Console,
    jobs: list[dict[str, Any]],
    inbox: ForwardInbox,
    videos: Path,
    table_db: Path,
    kept: bool,
) -> None:
    table = Table(
        Column("job", no_wrap=True), "provider", "road", "status", "time", "deliveries", title="receiver demo"
    )
    for job in jobs:
        taken = ""
        start, end = parse_iso(job["created_at"]), parse_iso(job["completed_at"])
        if start and end:
            taken = f"{(end - start).total_seconds():.1f} s"
        done = sum(1 for d in job["deliveries"] if d["status"] == "delivered")
        deliveries = f"{done}/{len(job['deliveries'])}"
        table.add_row(
            job["id"], job["provider"], job["completed_via"] or "-", job["status"], taken, deliveries
        )
    console.print(table)
    handlers = sorted({d["handler"] for job in jobs for d in job["deliveries"]})
    console.print(f"handlers: {', '.join(handlers)}")
    verified = sum(1 for r in inbox.received if r["verified"])
    console.print(
        f"forward: {verified} of {len(inbox.received)} events arrived with a valid Standard Webhooks"
        " signature"
    )
    files = sorted(str(p.relative_to(videos)) for p in videos.rglob("*") if p.is_file())
    console.print(f"storage: {len(files)} files in {videos}: {', '.join(files)}")
    with contextlib.closing(sqlite3.connect(table_db)) as conn:
        rows = conn.execute("SELECT COUNT(*) FROM generation_events").fetchone()[0]
    console.print(f"database: {rows} rows in table generation_events of {table_db}")
    if not kept:
        console.print("(the demo's folder is removed now; `receiver demo --keep DIR` keeps it)")
