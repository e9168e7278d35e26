"""POST /hooks/{provider}/{token}: verify, record durably, answer. Handlers never run here."""

from __future__ import annotations

import json
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from receiver.bodies import MAX_BODY, BodyTooLarge, read_body
from receiver.service import Receiver, WebhookRefused

log = structlog.get_logger()


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


class HookEndpoint:
    """The webhook route as a bare ASGI endpoint: providers send it more requests than everything else
    together, so its answer is written as two ASGI messages instead of through a Response object (the
    same bytes JSONResponse writes), and nothing is logged or built per request beyond that. Errors the
    app renders (StoreUnavailable: 503; a slow body: 408) are raised to it as from any route."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        receiver: Receiver = scope["app"].state.receiver
        provider: str = scope["path_params"]["provider"]
        request = Request(scope, receive)
        reason: str | None = None
        try:
            answer = await receiver.accept_webhook(
                provider, scope["path_params"]["token"], request.headers, lambda: read_body(request)
            )
            status = 200
        except WebhookRefused as exc:
            status, reason = exc.status, exc.message
        except BodyTooLarge:
            status, reason = 413, f"body is over {MAX_BODY} bytes"
        if reason is not None:
            answer = {"error": reason}
            log.warning("webhook.refused", provider=provider, status_code=status, reason=reason)
        receiver.metrics.webhook(provider, status)
        body = json.dumps(answer, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
        headers = [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


hook = HookEndpoint()
