"""Request bodies as the routes take them: bounded in size, and JSON the job store can hold.

A valid token or admin token says who sent a body, not that it is sane: JSON nested deeper than the
parser's recursion limit, NaN, strings with NUL or unpaired surrogates all parse (or blow up) and
then fail later in a store or a handler. They are refused here, with a 400 naming the problem.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Iterable
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive

MAX_BODY = 1024 * 1024
MAX_DEPTH = 32  # objects and arrays within each other; a job's metadata needs a few
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # PostgreSQL text has no NUL; UTF-8 has no surrogates


class BodyTooLarge(Exception):
    pass


class BodyTooSlow(Exception):
    """The body did not arrive within the deadline: 408."""


class BadJSON(ValueError):
    """A body that is not JSON the receiver can store; the message says why, for a 400."""


async def read_body(request: Request) -> bytes:
    """The body, refused with BodyTooLarge past MAX_BODY bytes without reading more than that."""
    _check_length(request.headers)
    chunks = bytearray()
    async for chunk in request.stream():
        chunks += chunk
        if len(chunks) > MAX_BODY:
            raise BodyTooLarge
    return bytes(chunks)


def _check_length(headers: Headers) -> None:
    length = headers.get("content-length")
    if length is not None and length.isascii() and length.isdigit() and int(length) > MAX_BODY:
        raise BodyTooLarge


class BodyReads:
    """Bodies read straight from ASGI `receive`, each within `timeout` seconds, without a timer per
    read: a body that has arrived whole is handed over without waiting, and a timer per request
    (anyio's or asyncio's) cost more than the rest of the read. Open reads are noted instead, and one
    loop timer, armed while any is open, sweeps them every `timeout / SWEEPS` seconds and cancels those
    past their deadline: a slow body gets BodyTooSlow within 1 + 1 / SWEEPS times `timeout`."""

    SWEEPS = 4

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._open: dict[asyncio.Task[Any], float] = {}  # reading task -> its deadline (loop time)
        self._expired: set[asyncio.Task[Any]] = set()
        self._sweep: asyncio.TimerHandle | None = None

    async def read(self, receive: Receive, headers: Headers) -> bytes:
        """The body, refused with BodyTooLarge past MAX_BODY bytes (not reading more than that) or
        BodyTooSlow past the deadline; ClientDisconnect when the client went away (as Request.stream)."""
        _check_length(headers)
        task = asyncio.current_task()
        assert task is not None  # called from a request's task
        loop = asyncio.get_running_loop()
        self._open[task] = loop.time() + self.timeout
        if self._sweep is None:
            self._sweep = loop.call_later(self.timeout / self.SWEEPS, self._cancel_late)
        try:
            return await _receive_body(receive)
        except asyncio.CancelledError:
            # This deadline's own cancel becomes BodyTooSlow; one from anyone else as well stands.
            if task not in self._expired or task.uncancel() > 0:
                raise
            raise BodyTooSlow from None
        finally:
            del self._open[task]
            self._expired.discard(task)

    def _cancel_late(self) -> None:
        """The sweep. A task noted here is suspended inside `read` (it runs no other code while noted),
        so its cancel is delivered there and nowhere else."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for task, deadline in self._open.items():
            if deadline <= now and task not in self._expired:
                self._expired.add(task)
                task.cancel()
        self._sweep = loop.call_later(self.timeout / self.SWEEPS, self._cancel_late) if self._open else None


async def _receive_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise BodyTooLarge
        chunks.append(chunk)
        more = message.get("more_body", False)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_object(body: bytes) -> dict[str, Any]:
    """A JSON object, or BadJSON."""
    try:
        data = _DECODER.decode(body.decode(json.detect_encoding(body), "surrogatepass"))  # as json.loads
    except RecursionError:
        raise BadJSON(f"body is nested more than {MAX_DEPTH} levels deep") from None
    except ValueError:
        raise BadJSON("body is not JSON") from None
    if not isinstance(data, dict):
        raise BadJSON("body is not a JSON object")
    _check(data)
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: stored as "Infinity", which JSON and PostgreSQL reject
        raise ValueError(text)
    return value


_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)  # json.loads makes one a call
_CONTAINERS = (dict, list)


def _check(data: dict[str, Any]) -> None:
    """Depth and strings, walked without recursion (the point is not to recurse on input)."""
    pending: list[tuple[dict[str, Any] | list[Any], int]] = [(data, 1)]
    while pending:
        container, depth = pending.pop()
        if depth > MAX_DEPTH:
            raise BadJSON(f"body is nested more than {MAX_DEPTH} levels deep")
        values: Iterable[Any] = container
        if isinstance(container, dict):
            for key in container:
                _check_string(key)
            values = container.values()
        for value in values:
            if isinstance(value, str):
                _check_string(value)
            elif isinstance(value, _CONTAINERS):
                pending.append((value, depth + 1))


def _check_string(text: str) -> None:
    if _UNSTORABLE.search(text):
        raise BadJSON("body holds a string with a NUL character or an unpaired surrogate")
