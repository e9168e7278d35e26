"""API Gateway in front of a Lambda handler, on loopback: each HTTP request becomes an HTTP API event
(payload 2.0), handed to the handler on one of `concurrency` threads (the warm containers), and the
function's answer becomes the HTTP answer. The handler is named as in a Lambda function's `Handler`
setting and looked up per invocation, so the module may be imported after the gateway starts."""

from __future__ import annotations

import asyncio
import base64
import importlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from receiver.background import BackgroundServer


def http_api_event(
    method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None, query: str = ""
) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) event, as Lambda hands it to the function."""
    return {
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": query,
        "headers": {"host": "hooks.example.com", "content-type": "application/json", **(headers or {})},
        "requestContext": {
            "accountId": "123456789012", "apiId": "api", "domainName": "hooks.example.com", "stage": "$default",
            "requestId": "req", "routeKey": "$default", "time": "01/Jan/2026:00:00:00 +0000", "timeEpoch": 0,
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.9", "userAgent": "t"},
        },
        "body": base64.b64encode(body).decode(), "isBase64Encoded": True,
    }  # fmt: skip


def read_answer(answer: dict[str, Any]) -> tuple[int, bytes]:
    """The status and body of a function's answer to an HTTP API event."""
    body = answer.get("body", "")
    raw = base64.b64decode(body) if answer.get("isBase64Encoded") else body.encode()
    return answer["statusCode"], raw


@contextmanager
def running_gateway(handler: str, concurrency: int = 4) -> Iterator[BackgroundServer]:
    """The gateway on loopback (its `url`); `handler` ("package.module.function") runs at most
    `concurrency` invocations at once, each on its own long-lived thread, as Lambda keeps that many
    warm containers."""
    module_name, function = handler.rsplit(".", 1)

    def invoke(event: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = getattr(importlib.import_module(module_name), function)(event, None)
        return answer

    with ThreadPoolExecutor(concurrency, thread_name_prefix="lambda") as containers:

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            request = Request(scope, receive)
            event = http_api_event(
                request.method, request.url.path, await request.body(), dict(request.headers),
                request.url.query,
            )  # fmt: skip
            answer = await asyncio.get_running_loop().run_in_executor(containers, invoke, event)
            status, body = read_answer(answer)
            headers = {
                k: v for k, v in (answer.get("headers") or {}).items() if k.lower() != "content-length"
            }
            await Response(body, status_code=status, headers=headers)(scope, receive, send)

        with BackgroundServer(app) as server:
            yield server
