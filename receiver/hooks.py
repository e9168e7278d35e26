"""POST /hooks/{provider}/{token}: verify, record durably, answer. Handlers never run here."""

from __future__ import annotations

from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from receiver.bodies import MAX_BODY, BodyTooLarge, read_body
from receiver.service import Receiver, WebhookRefused

log = structlog.get_logger()


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


async def hook(request: Request) -> Response:
    receiver: Receiver = request.app.state.receiver
    provider = request.path_params["provider"]
    reason: str | None = None
    try:
        answer = await receiver.accept_webhook(
            provider, request.path_params["token"], request.headers, lambda: read_body(request)
        )
    except WebhookRefused as exc:
        response: Response = error(exc.status, exc.message)
        reason = exc.message
    except BodyTooLarge:
        reason = f"body is over {MAX_BODY} bytes"
        response = error(413, reason)
    else:
        response = JSONResponse(answer)
    receiver.metrics.webhook(provider, response.status_code)
    if reason is not None:
        log.warning("webhook.refused", provider=provider, status_code=response.status_code, reason=reason)
    return response
