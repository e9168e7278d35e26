"""Admin routes behind RECEIVER_ADMIN_TOKEN: submit, read, replay, tick."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from receiver.bodies import MAX_BODY, BadJSON, BodyTooLarge, parse_object, read_body
from receiver.config import SettingsError
from receiver.costs import BudgetExceeded
from receiver.events import JobStatus, valid_idempotency_key
from receiver.hooks import error
from receiver.providers.base import ProviderError
from receiver.service import IdempotencyConflict, InvalidSubmit, NoSuchJob, NotFinished, Receiver

MAX_LIMIT = 1000
Endpoint = Callable[[Request], Awaitable[Response]]


def admin(*query: str) -> Callable[[Callable[[Request, Receiver], Awaitable[Response]]], Endpoint]:
    """An admin route behind the bearer token, taking the query parameters `query` and no others: a
    misspelt `?stauts=failed` is a 400 naming it, not a silently unfiltered answer."""

    def wrap(fn: Callable[[Request, Receiver], Awaitable[Response]]) -> Endpoint:
        async def guarded(request: Request) -> Response:
            receiver: Receiver = request.app.state.receiver
            token = receiver.settings.admin_token
            if not token:
                return error(403, "admin routes are off: set RECEIVER_ADMIN_TOKEN")
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), token.encode()):
                return error(401, "missing or wrong bearer token")
            unknown = sorted(set(request.query_params) - set(query))
            if unknown:
                return error(400, f"{unknown[0]}: unknown query parameter")
            return await fn(request, receiver)

        return guarded

    return wrap


@admin()
async def submit(request: Request, receiver: Receiver) -> Response:
    try:
        data = parse_object(await read_body(request))
    except BodyTooLarge:
        return error(413, f"body is over {MAX_BODY} bytes")
    except BadJSON as exc:
        return error(400, str(exc))
    key = request.headers.get("idempotency-key")
    if key is not None and not valid_idempotency_key(key):
        return error(400, "Idempotency-Key must be 1 to 255 printable ASCII characters")
    try:
        job, made = await receiver.submit_request_once(data, key)
    except InvalidSubmit as exc:
        return JSONResponse({"error": "invalid request", "errors": exc.errors}, status_code=422)
    except IdempotencyConflict as exc:
        return error(409, str(exc))
    except BudgetExceeded as exc:
        return error(402, exc.message, provider=exc.provider, code=exc.code)
    except SettingsError as exc:
        return error(503, str(exc))
    except ProviderError as exc:
        status = exc.status_code if exc.status_code and 400 <= exc.status_code < 500 else 502
        return error(status, exc.message, provider=exc.provider, code=exc.code, request_id=exc.request_id)
    # A repeat of a request already made (the same Idempotency-Key) answers with its job, as it is now.
    return JSONResponse(job.to_json(), status_code=202 if made else 200)


@admin()
async def get_job(request: Request, receiver: Receiver) -> Response:
    try:
        job = await receiver.get_job(request.path_params["job_id"])
    except NoSuchJob:
        return error(404, "no such job")
    return JSONResponse(job.to_json())


@admin("status", "limit")
async def list_jobs(request: Request, receiver: Receiver) -> Response:
    status = request.query_params.get("status")
    if status is not None and status not in set(JobStatus):
        return error(400, f"status: one of {', '.join(JobStatus)}")
    raw = request.query_params.get("limit", "100")
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:  # '²'.isdigit() too
        return error(400, f"limit: a whole number from 1 to {MAX_LIMIT}")
    jobs = await receiver.list_jobs(status, int(raw))
    return JSONResponse({"jobs": [job.to_json() for job in jobs]})


@admin("handler")
async def replay(request: Request, receiver: Receiver) -> Response:
    try:
        replayed = await receiver.replay(request.path_params["job_id"], request.query_params.get("handler"))
    except NoSuchJob:
        return error(404, "no such job")
    except NotFinished as exc:
        return error(409, str(exc))
    except SettingsError as exc:
        return error(400, f"handler: {exc}")
    return JSONResponse({"replayed": replayed.count, "event_id": replayed.event_id})


@admin()
async def tick(request: Request, receiver: Receiver) -> Response:
    return JSONResponse(await receiver.tick())
