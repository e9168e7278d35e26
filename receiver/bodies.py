"""Request bodies as the routes take them: bounded in size, and JSON the job store can hold.

A valid token or admin token says who sent a body, not that it is sane: JSON nested deeper than the
parser's recursion limit, NaN, strings with NUL or unpaired surrogates all parse (or blow up) and
then fail later in a store or a handler. They are refused here, with a 400 naming the problem.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from starlette.requests import Request

MAX_BODY = 1024 * 1024
MAX_DEPTH = 32  # objects and arrays within each other; a job's metadata needs a few
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # PostgreSQL text has no NUL; UTF-8 has no surrogates


class BodyTooLarge(Exception):
    pass


class BadJSON(ValueError):
    """A body that is not JSON the receiver can store; the message says why, for a 400."""


async def read_body(request: Request) -> bytes:
    """The body, refused with BodyTooLarge past MAX_BODY bytes without reading more than that."""
    length = request.headers.get("content-length")
    if length is not None and length.isascii() and length.isdigit() and int(length) > MAX_BODY:
        raise BodyTooLarge
    chunks = bytearray()
    async for chunk in request.stream():
        chunks += chunk
        if len(chunks) > MAX_BODY:
            raise BodyTooLarge
    return bytes(chunks)


def parse_object(body: bytes) -> dict[str, Any]:
    """A JSON object, or BadJSON."""
    try:
        data = json.loads(body, parse_constant=_no_constant, parse_float=_finite)
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


def _check(data: dict[str, Any]) -> None:
    """Depth and strings, walked without recursion (the point is not to recurse on input)."""
    pending: list[tuple[Any, int]] = [(data, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, str):
            if _UNSTORABLE.search(value):
                raise BadJSON("body holds a string with a NUL character or an unpaired surrogate")
            continue
        if not isinstance(value, dict | list):
            continue
        if depth > MAX_DEPTH:
            raise BadJSON(f"body is nested more than {MAX_DEPTH} levels deep")
        items = list(value.items()) if isinstance(value, dict) else [(None, v) for v in value]
        for key, item in items:
            if key is not None:
                pending.append((key, depth))
            pending.append((item, depth + 1))
