"""The Starlette app: provider webhooks, health, admin routes, metrics and the dashboard (/ui)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from receiver import admin, openapi, ui
from receiver.hooks import HookRoad, hook_path
from receiver.service import Receiver, StoreUnavailable
from receiver.serving import BodyDeadline, ServerLimits


class ReceiverApp(Starlette):
    """The Starlette app with the webhook road in front: `POST /hooks/{provider}/{token}` goes straight
    to `hooks` (most requests are webhooks, and Starlette's routing and middleware cost as much as the
    road's own work); everything else, and any path the route would not match, goes to Starlette,
    which also answers 405 and 404 around the road. Under `serving.server_config` only the rest of the
    app is wrapped in BodyDeadline: the road bounds its own body reads (`bound_bodies`)."""

    def __init__(self, hooks: HookRoad, **options: Any) -> None:
        super().__init__(**options)
        self.hooks = hooks
        self.rest: ASGIApp = partial(Starlette.__call__, self)

    def bound_bodies(self, timeout: float) -> ASGIApp:
        """This app with every request body read within `timeout` seconds (see serving.bound_bodies)."""
        self.hooks.reads.timeout = timeout
        self.rest = BodyDeadline(partial(Starlette.__call__, self), timeout)
        return self

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            found = hook_path(scope["path"])
            if found is not None:
                await self.hooks.serve(*found, scope, receive, send)
                return
        await self.rest(scope, receive, send)


def create_app(receiver: Receiver, *, run_worker: bool = True) -> ReceiverApp:
    """The web app; with `run_worker` its lifespan also runs the polling and dispatch loop."""
    worker = receiver.worker

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

    hooks = HookRoad(receiver, ServerLimits().body_timeout)
    app = ReceiverApp(
        hooks,
        routes=[
            Route("/hooks/{provider}/{token}", hooks, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/openapi.json", openapi_document, methods=["GET"]),
            Route("/jobs", admin.submit, methods=["POST"]),
            Route("/jobs", admin.list_jobs, methods=["GET"]),
            Route("/jobs/{job_id}", admin.get_job, methods=["GET"]),
            Route("/jobs/{job_id}/replay", admin.replay, methods=["POST"]),
            Route("/tick", admin.tick, methods=["POST"]),
            Mount("/ui", routes=ui.routes()),
        ],
        lifespan=lifespan,
        exception_handlers={StoreUnavailable: store_unavailable},
    )
    app.state.receiver = receiver
    app.state.run_worker = run_worker
    return app


async def store_unavailable(request: Request, exc: Exception) -> Response:
    """The database is restarting or cut off: 503, so a provider or client sends it again later."""
    return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "5"})


async def healthz(request: Request) -> Response:
    receiver: Receiver = request.app.state.receiver
    problems = await receiver.health(with_worker=request.app.state.run_worker)
    if problems:
        return JSONResponse({"ok": False, "problems": problems}, status_code=503)
    return JSONResponse({"ok": True})


async def metrics(request: Request) -> Response:
    receiver: Receiver = request.app.state.receiver
    return Response(await receiver.render_metrics(), media_type=CONTENT_TYPE_LATEST)


async def openapi_document(request: Request) -> Response:
    """The API's OpenAPI 3.1 document (receiver/openapi.py)."""
    return JSONResponse(openapi.document())
