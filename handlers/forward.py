"""`forward`: POST the event JSON to a URL, signed per Standard Webhooks."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from typing import Any

import httpx

from handlers import ConfigError
from handlers._http import (
    check_http_url,
    check_status,
    check_transport,
    http_client,
    transport_failure,
)
from receiver.clock import Clock, system_clock

SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix of Standard Webhooks secrets, not a secret
HTTP_TIMEOUT = 30.0


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret; ConfigError (without the secret) when malformed."""
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise ConfigError("key 'secret': must start with 'whsec_'")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("key 'secret': the part after 'whsec_' must be base64") from None
    if not key:
        raise ConfigError("key 'secret': the part after 'whsec_' is empty")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,` + base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def signed_headers(key: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, msg_id, timestamp, body),
    }


class ForwardHandler:
    """Keys: `url`, `secret` (`whsec_...`), optional `headers` (a table of extra request headers).

    2xx is delivered; 429 with Retry-After waits that long; 5xx, 408 and network errors are retried;
    any other status is permanent. Reports `{"status_code": n}`.
    """

    def __init__(
        self,
        url: str,
        secret: str,
        headers: dict[str, str] | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock = system_clock,
    ) -> None:
        self.url = check_http_url(url, "url")
        self.clock = clock
        self._key = secret_key(secret)
        if headers is not None and not (
            isinstance(headers, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
        ):
            raise ConfigError("key 'headers': must be a table of string names to string values")
        self.headers = dict(headers or {})
        self._what = f"forward to {httpx.URL(url).host}"
        self._client = http_client(HTTP_TIMEOUT, check_transport(transport))

    async def handle(self, event: dict[str, Any]) -> dict[str, Any] | None:
        body = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
        headers = {
            **self.headers,
            **signed_headers(self._key, event["id"], int(self.clock().timestamp()), body),
        }
        client = await self._client.get()
        try:
            response = await client.post(self.url, content=body, headers=headers)
        except httpx.TransportError as exc:
            raise transport_failure(exc, self._what) from None
        check_status(response.status_code, response.headers, response.text, self._what, now=self.clock())
        return {"status_code": response.status_code}

    async def aclose(self) -> None:
        await self._client.aclose()
