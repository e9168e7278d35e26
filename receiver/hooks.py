"""POST /hooks/{provider}/{token}: verify, record durably, answer. Handlers never run here."""

from __future__ import annotations

import json
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from receiver.events import JobStatus
from receiver.providers import apiframe
from receiver.providers.base import ProviderError, ProviderStatus
from receiver.service import Receiver, update_from
from receiver.signing import TokenError
from receiver.worker import Worker

log = structlog.get_logger()

MAX_BODY = 1024 * 1024


class BodyTooLarge(Exception):
    pass


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


async def hook(request: Request) -> Response:
    provider = request.path_params["provider"]
    response = await _hook(request, request.app.state.receiver, request.app.state.worker)
    request.app.state.webhooks[(provider, response.status_code)] += 1
    if response.status_code >= 400:
        reason = json.loads(bytes(response.body)).get("error")
        log.warning("webhook.refused", provider=provider, status_code=response.status_code, reason=reason)
    return response


async def _hook(request: Request, receiver: Receiver, worker: Worker) -> Response:
    provider = request.path_params["provider"]
    try:
        claims = receiver.signer.verify(request.path_params["token"], provider)
    except TokenError as exc:
        return error(401, str(exc))
    try:
        body = await _read_body(request)
    except BodyTooLarge:
        return error(413, f"body is over {MAX_BODY} bytes")
    if provider == "apiframe" and not _signature_ok(receiver, request, body):
        return error(401, "X-Webhook-Signature does not match the body")
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return error(400, "body is not a JSON object")
    status = _usable(provider, data)
    if status is None:
        if not await receiver.store.poll_soon(claims.job_id, receiver.clock()):
            return error(404, "no such job")
        worker.wake()
        log.info("webhook.unusable", job_id=claims.job_id, provider=provider)
        return JSONResponse({"ok": True, "confirm": "poll"})
    recorded = await receiver.record(claims.job_id, update_from(status), via="webhook")
    if recorded.job is None:
        return error(404, "no such job")
    if recorded.conflict:
        if await receiver.store.find_job(provider, status.provider_job_id) is not None:
            return error(401, "webhook token belongs to another job")
        return error(400, "body names another job (jobId)")
    return JSONResponse({"ok": True, "status": str(recorded.job.status), "duplicate": not recorded.changed})


def _signature_ok(receiver: Receiver, request: Request, body: bytes) -> bool:
    """Checked when present (and required when the setting says so), on top of the URL token."""
    header = request.headers.get("x-webhook-signature")
    key = receiver.settings.apiframe_api_key
    if header is None or not key:
        return not receiver.settings.require_signature
    return apiframe.verify_signature(key, body, header)


async def _read_body(request: Request) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise BodyTooLarge
    chunks = bytearray()
    async for chunk in request.stream():
        chunks += chunk
        if len(chunks) > MAX_BODY:
            raise BodyTooLarge
    return bytes(chunks)


def _usable(provider: str, data: dict[str, Any]) -> ProviderStatus | None:
    """The report as a status we can act on, or None when it must be confirmed by a status read."""
    if provider != "apiframe":
        return None
    try:
        status = apiframe.parse_webhook(data)
    except (ProviderError, ValueError, KeyError, TypeError):
        return None
    if status.status is JobStatus.SUCCEEDED and not status.output_urls:
        return None
    return status
