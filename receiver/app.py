"""The Starlette app: provider webhooks, health, admin routes and metrics."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from receiver import admin
from receiver.hooks import hook
from receiver.service import Receiver
from receiver.worker import Worker


def create_app(receiver: Receiver, *, run_worker: bool = True) -> Starlette:
    """The web app; with `run_worker` its lifespan also runs the polling and dispatch loop."""
    worker = Worker(receiver)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await receiver.open()
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop)) if run_worker else None
        try:
            yield
        finally:
            stop.set()
            if task is not None:
                await task
            await receiver.close()

    app = Starlette(
        routes=[
            Route("/hooks/{provider}/{token}", hook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/jobs", admin.submit, methods=["POST"]),
            Route("/jobs", admin.list_jobs, methods=["GET"]),
            Route("/jobs/{job_id}", admin.get_job, methods=["GET"]),
            Route("/jobs/{job_id}/replay", admin.replay, methods=["POST"]),
            Route("/tick", admin.tick, methods=["POST"]),
        ],
        lifespan=lifespan,
    )
    app.state.receiver = receiver
    app.state.worker = worker
    app.state.webhooks = Counter()
    return app


async def healthz(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def metrics(request: Request) -> Response:
    counts = await request.app.state.receiver.store.counts()
    webhooks: Counter[tuple[str, int]] = request.app.state.webhooks
    lines = ["# TYPE receiver_jobs gauge"]
    lines += [f'receiver_jobs{{status="{s}"}} {n}' for s, n in sorted(counts["jobs"].items())]
    lines.append("# TYPE receiver_deliveries gauge")
    lines += [f'receiver_deliveries{{status="{s}"}} {n}' for s, n in sorted(counts["deliveries"].items())]
    lines.append("# TYPE receiver_webhooks_total counter")
    lines += [
        f'receiver_webhooks_total{{provider="{p}",code="{c}"}} {n}' for (p, c), n in sorted(webhooks.items())
    ]
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")
