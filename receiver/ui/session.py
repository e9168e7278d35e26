"""The dashboard's session: one signed cookie carrying a CSRF token and whether the admin token was given.

The cookie is signed with a key derived from RECEIVER_ADMIN_TOKEN, so changing the token ends every
session. It is HttpOnly (scripts cannot read it), SameSite=Strict (other sites' forms do not carry it),
and Secure when the receiver's public URL is https. Every form that changes something carries the CSRF
token, compared with the cookie's in constant time; the login form too (against login CSRF).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.responses import Response

COOKIE = "receiver_ui"
MAX_AGE = 12 * 3600  # seconds a session lasts
SALT = "receiver-ui-session"


@dataclass(frozen=True)
class Session:
    csrf: str
    signed_in: bool


def _serializer(admin_token: str) -> URLSafeTimedSerializer:
    key = hashlib.sha256(b"receiver-ui:" + admin_token.encode()).hexdigest()
    return URLSafeTimedSerializer(key, salt=SALT)


def read(admin_token: str, cookie: str | None) -> Session | None:
    """The session in `cookie`, or None when it is missing, forged, or older than MAX_AGE."""
    if not cookie:
        return None
    try:
        data = _serializer(admin_token).loads(cookie, max_age=MAX_AGE)
    except BadSignature:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("csrf"), str):
        return None
    return Session(data["csrf"], data.get("in") is True)


def fresh(signed_in: bool) -> Session:
    return Session(secrets.token_urlsafe(24), signed_in)


def store(response: Response, admin_token: str, session: Session, *, secure: bool) -> None:
    value = _serializer(admin_token).dumps({"csrf": session.csrf, "in": session.signed_in})
    response.set_cookie(
        COOKIE, value, max_age=MAX_AGE, path="/ui", httponly=True, samesite="strict", secure=secure
    )


def forget(response: Response, *, secure: bool) -> None:
    response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict", secure=secure)


def csrf_ok(session: Session | None, given: str | None) -> bool:
    return session is not None and given is not None and hmac.compare_digest(session.csrf, given)


def token_ok(admin_token: str, given: str) -> bool:
    return hmac.compare_digest(given.encode(), admin_token.encode())
