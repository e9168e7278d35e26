"""The dashboard's routes. Like the admin API they go through Receiver methods only (no store, no
worker), and sit behind RECEIVER_ADMIN_TOKEN: a login form turns it into a session cookie."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from receiver.bodies import BodyTooLarge, read_body
from receiver.config import SettingsError
from receiver.events import TERMINAL, JobStatus
from receiver.providers import registry
from receiver.providers.base import ProviderError
from receiver.service import InvalidSubmit, NoSuchJob, NotFinished, Receiver
from receiver.ui import session
from receiver.ui.session import Session

HERE = Path(__file__).parent
KEEPALIVE = 15.0  # seconds between comments on an idle event stream (proxies close silent ones)
FORM_FIELDS = (
    "prompt", "negative_prompt", "multi_prompt", "mode", "aspect_ratio", "duration",
    "start_image", "end_image",
)  # fmt: skip

templates = Jinja2Templates(directory=HERE / "templates")
Page = Callable[[Request, Receiver, Session], Awaitable[Response]]
Form = Callable[[Request, Receiver, Session, dict[str, str]], Awaitable[Response]]


def age(moment: datetime | None, now: datetime) -> str:
    """`moment` as how long ago, to the coarsest unit that says it: 5 s, 3 min, 2 h, 4 d."""
    if moment is None:
        return ""
    seconds = max(0, int((now - moment).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


templates.env.filters["shorten"] = shorten


def _secure(receiver: Receiver) -> bool:
    return receiver.settings.public_url.startswith("https://")


def _render(request: Request, receiver: Receiver, name: str, code: int = 200, **context: Any) -> Response:
    now = receiver.clock()
    context.setdefault("signed_in", True)
    context.update(now=now, age=lambda moment: age(moment, now))
    return templates.TemplateResponse(request, name, context, status_code=code)


def _current(request: Request, receiver: Receiver) -> Session | None:
    token = receiver.settings.admin_token
    return session.read(token, request.cookies.get(session.COOKIE)) if token else None


def _off(request: Request, receiver: Receiver) -> Response:
    return _render(request, receiver, "off.html", 403, signed_in=False, csrf="")


def _gate(request: Request, receiver: Receiver) -> Session | Response:
    """The signed-in session, or the answer instead: how to turn the UI on, or the login form."""
    if not receiver.settings.admin_token:
        return _off(request, receiver)
    current = _current(request, receiver)
    if current is None or not current.signed_in:
        return RedirectResponse("/ui/login", status_code=303)
    return current


def page(fn: Page) -> Callable[[Request], Awaitable[Response]]:
    """A page that shows, for a signed-in session."""

    async def guarded(request: Request) -> Response:
        receiver: Receiver = request.app.state.receiver
        current = _gate(request, receiver)
        return current if isinstance(current, Response) else await fn(request, receiver, current)

    return guarded


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (the first value of each); bounded like every body."""
    fields = parse_qs((await read_body(request)).decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


def action(fn: Form) -> Callable[[Request], Awaitable[Response]]:
    """A form that changes something: a signed-in session and its CSRF token, else 403."""

    async def guarded(request: Request) -> Response:
        receiver: Receiver = request.app.state.receiver
        current = _gate(request, receiver)
        if isinstance(current, Response):
            return current
        try:
            fields = await _form(request)
        except BodyTooLarge:
            return Response("form too large", status_code=413)
        if not session.csrf_ok(current, fields.get("csrf")):
            return _render(request, receiver, "refused.html", 403, csrf=current.csrf)
        return await fn(request, receiver, current, fields)

    return guarded


async def index(request: Request) -> Response:
    return RedirectResponse("/ui/jobs", status_code=303)


async def login(request: Request) -> Response:
    receiver: Receiver = request.app.state.receiver
    token = receiver.settings.admin_token
    if not token:
        return _off(request, receiver)
    current = _current(request, receiver)
    error = None
    status = 200
    if request.method == "POST":
        fields = await _form(request)
        if not session.csrf_ok(current, fields.get("csrf")):
            error, status = "The form had expired or came from elsewhere: sign in again.", 403
        elif not session.token_ok(token, fields.get("token", "")):
            error, status = "Wrong admin token.", 401
        else:
            signed = RedirectResponse("/ui/jobs", status_code=303)
            session.store(signed, token, session.fresh(True), secure=_secure(receiver))
            return signed
    fresh = session.fresh(False)
    response = _render(request, receiver, "login.html", status, signed_in=False, csrf=fresh.csrf, error=error)
    session.store(response, token, fresh, secure=_secure(receiver))
    return response


@action
async def logout(request: Request, receiver: Receiver, current: Session, fields: dict[str, str]) -> Response:
    response = RedirectResponse("/ui/login", status_code=303)
    session.forget(response, secure=_secure(receiver))
    return response


def _page_number(raw: str | None) -> int:
    return int(raw) if raw and raw.isascii() and raw.isdigit() and len(raw) < 6 else 0


@page
async def jobs(request: Request, receiver: Receiver, current: Session) -> Response:
    query = request.query_params
    status = query.get("status") or None
    provider = query.get("provider") or None
    status = status if status in set(JobStatus) else None
    provider = provider if provider in registry.NAMES else None
    listing = await receiver.jobs_page(status, provider, _page_number(query.get("page")))
    filters = {k: v for k, v in (("status", status), ("provider", provider)) if v}

    def link(to: int) -> str:
        return "/ui/jobs?" + urlencode({**filters, "page": to})

    return _render(
        request, receiver, "jobs.html", csrf=current.csrf, listing=listing, status=status,
        provider=provider, statuses=list(JobStatus), providers=registry.NAMES, link=link, live=True,
        roads={name: "webhook" if registry.get(name).sends_webhooks else "poll" for name in registry.NAMES},
    )  # fmt: skip


@page
async def job(request: Request, receiver: Receiver, current: Session) -> Response:
    try:
        found = await receiver.get_job(request.path_params["job_id"])
    except NoSuchJob:
        return _render(request, receiver, "missing.html", 404, csrf=current.csrf)
    return _render(
        request, receiver, "job.html", csrf=current.csrf, job=found, finished=found.status in TERMINAL,
        handlers=list(receiver.by_name), notice=request.query_params.get("notice"), live=True,
    )  # fmt: skip


@action
async def replay(request: Request, receiver: Receiver, current: Session, fields: dict[str, str]) -> Response:
    job_id = request.path_params["job_id"]
    handler = fields.get("handler") or None
    try:
        replayed = await receiver.replay(job_id, handler)
    except NoSuchJob:
        return _render(request, receiver, "missing.html", 404, csrf=current.csrf)
    except (NotFinished, SettingsError) as exc:
        notice = str(exc)
    else:
        notice = f"{replayed.count} deliveries due again"
    return RedirectResponse(f"/ui/jobs/{job_id}?" + urlencode({"notice": notice}), status_code=303)


@page
async def dead(request: Request, receiver: Receiver, current: Session) -> Response:
    return _render(
        request, receiver, "dead.html", csrf=current.csrf, letters=await receiver.dead_letters(),
        budget_letters=await receiver.budget_letters(), notice=request.query_params.get("notice"), live=True,
    )  # fmt: skip


@action
async def replay_dead(
    request: Request, receiver: Receiver, current: Session, fields: dict[str, str]
) -> Response:
    job_id, event_id, handler = fields.get("job_id"), fields.get("event_id"), fields.get("handler")
    if (job_id or event_id) and handler:
        try:
            if job_id:
                count = (await receiver.replay(job_id, handler)).count
            else:
                count = (await receiver.replay_budget_event(event_id or "", handler)).count
        except (NoSuchJob, NotFinished, SettingsError) as exc:
            return RedirectResponse("/ui/dead?" + urlencode({"notice": str(exc)}), status_code=303)
    else:
        count = await receiver.replay_dead()
    return RedirectResponse("/ui/dead?" + urlencode({"notice": f"{count} replayed"}), status_code=303)


def _submit_form(
    request: Request, receiver: Receiver, current: Session, code: int = 200, **context: Any
) -> Response:
    context.setdefault("values", {"provider": receiver.settings.provider or "auto", "mode": "pro"})
    context.setdefault("errors", {})
    return _render(
        request, receiver, "submit.html", code, csrf=current.csrf, providers=registry.NAMES, **context
    )


@page
async def submit_page(request: Request, receiver: Receiver, current: Session) -> Response:
    return _submit_form(request, receiver, current)


def _request_from(fields: dict[str, str]) -> dict[str, Any]:
    """The form as POST /jobs takes a body: blank fields left out, the duration a number when it is one
    (else passed on for the rules to refuse), the audio box a boolean."""
    data: dict[str, Any] = {name: fields[name] for name in FORM_FIELDS if fields.get(name, "").strip()}
    duration = data.get("duration", "").strip()
    if duration:
        data["duration"] = int(duration) if duration.isascii() and duration.isdigit() else duration
    data["generate_audio"] = fields.get("generate_audio") == "on"
    data["provider"] = fields.get("provider") or None
    return data


@action
async def submit(request: Request, receiver: Receiver, current: Session, fields: dict[str, str]) -> Response:
    try:
        made = await receiver.submit_request(_request_from(fields))
    except InvalidSubmit as exc:
        return _submit_form(request, receiver, current, 422, values=fields, errors=exc.errors)
    except (ProviderError, SettingsError) as exc:
        return _submit_form(request, receiver, current, 502, values=fields, errors={"provider": str(exc)})
    return RedirectResponse(f"/ui/jobs/{made.id}", status_code=303)


@page
async def health(request: Request, receiver: Receiver, current: Session) -> Response:
    return _render(request, receiver, "health.html", csrf=current.csrf, health=await receiver.overview())


@page
async def events(request: Request, receiver: Receiver, current: Session) -> Response:
    """Server-Sent Events: a `data:` line each time this process records a change, so a live page
    fetches itself again; comments keep an idle stream open. The stream ends when the server stops."""
    changes = receiver.changes

    async def stream() -> AsyncIterator[str]:
        yield "retry: 1000\n\n"
        version = changes.version
        while not changes.closed:
            try:
                async with asyncio.timeout(KEEPALIVE):
                    await changes.wait(version)
            except TimeoutError:
                yield ": idle\n\n"
                continue
            if changes.closed:
                break
            version = changes.version
            yield f"data: {version}\n\n"

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


def routes() -> list[BaseRoute]:
    """Mounted at /ui by the app."""
    return [
        Route("/", index, methods=["GET"]),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/jobs", jobs, methods=["GET"]),
        Route("/jobs/{job_id}", job, methods=["GET"]),
        Route("/jobs/{job_id}/replay", replay, methods=["POST"]),
        Route("/dead", dead, methods=["GET"]),
        Route("/dead/replay", replay_dead, methods=["POST"]),
        Route("/submit", submit_page, methods=["GET"]),
        Route("/submit", submit, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/events", events, methods=["GET"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
