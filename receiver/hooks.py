"""POST /hooks/{provider}/{token}: verify, record durably, answer. Handlers never run here."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import structlog
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from receiver.bodies import MAX_BODY, BodyReads, BodyTooLarge, BodyTooSlow
from receiver.service import Receiver, StoreUnavailable, WebhookRefused

log = structlog.get_logger()

PREFIX = "/hooks/"
JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"
RETRY_AFTER = b"5"  # seconds, on a 503 while the store is unavailable (as every route answers it)


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def hook_path(path: str) -> tuple[str, str] | None:
    """(provider, token) of a path the route /hooks/{provider}/{token} matches, else None."""
    if not path.startswith(PREFIX):
        return None
    provider, _, token = path[len(PREFIX) :].partition("/")
    if not provider or not token or "/" in token:
        return None
    return provider, token


def dumps(answer: dict[str, Any]) -> bytes:
    """The bytes JSONResponse writes for `answer`."""
    return json.dumps(answer, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


@lru_cache(maxsize=64)
def accepted(items: tuple[tuple[str, Any], ...]) -> bytes:
    """A 200's body, by its items: accepted webhooks get a few answers (status, duplicate), over and
    over, and encoding each again was a tenth of the road's own work."""
    return dumps(dict(items))


class HookRoad:
    """The webhook road as a bare ASGI app. Providers send it more requests than everything else
    together, so `ReceiverApp` serves it in front of Starlette: no routing, middleware, Request or
    Response objects, and bodies read within `BodyReads`' deadline instead of a timer per request. It
    answers what the app would (the same bytes JSONResponse writes; 503 with Retry-After while the store
    is unavailable; 408 for a slow body), and logs nothing per request beyond refusals."""

    def __init__(self, receiver: Receiver, body_timeout: float) -> None:
        self.receiver = receiver
        self.reads = BodyReads(body_timeout)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """As a Starlette endpoint: the route, for requests the front leaves to the app."""
        params = scope["path_params"]
        await self.serve(params["provider"], params["token"], scope, receive, send)

    async def serve(self, provider: str, token: str, scope: Scope, receive: Receive, send: Send) -> None:
        receiver = self.receiver
        headers = Headers(scope=scope)
        reason: str | None = None
        try:
            answer = await receiver.accept_webhook(
                provider, token, headers, lambda: self.reads.read(receive, headers)
            )
            status = 200
        except WebhookRefused as exc:
            status, reason = exc.status, exc.message
        except BodyTooLarge:
            status, reason = 413, f"body is over {MAX_BODY} bytes"
        except BodyTooSlow:
            await respond(send, 408, b"request body too slow", TEXT, [(b"connection", b"close")])
            return
        except StoreUnavailable as exc:
            await respond(send, 503, dumps({"error": str(exc)}), JSON, [(b"retry-after", RETRY_AFTER)])
            return
        if reason is None:
            body = accepted(tuple(answer.items()))
        else:
            body = dumps({"error": reason})
            log.warning("webhook.refused", provider=provider, status_code=status, reason=reason)
        receiver.metrics.webhook(provider, status)
        await respond(send, status, body, JSON)


async def respond(
    send: Send, status: int, body: bytes, kind: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    """An answer as two ASGI messages, with the headers Starlette's responses write."""
    headers = [*(extra or ()), (b"content-length", b"%d" % len(body)), (b"content-type", kind)]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
