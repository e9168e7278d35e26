"""Per-job webhook tokens: itsdangerous-signed, bound to one job and one provider, with a maximum age."""

from __future__ import annotations

from dataclasses import dataclass

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer

from receiver.clock import Clock, system_clock

_SALT = "receiver.webhook.v1"
VERIFIED_MAX = 100_000  # tokens remembered as verified (about 30 MB at most)


class TokenError(Exception):
    """A webhook token that must be refused (401). Messages never include the token or a secret."""


class TokenInvalid(TokenError):
    """Malformed, tampered, or signed with a secret we do not hold."""


class TokenExpired(TokenError):
    """Older than the maximum age."""


class TokenMismatch(TokenError):
    """Valid, but for another provider than the route it was posted to."""


@dataclass(frozen=True)
class TokenClaims:
    job_id: str
    provider: str


class WebhookSigner:
    """Signs with the current secret; verifies with it and with every old secret (rotation)."""

    def __init__(
        self,
        secret: str,
        old_secrets: tuple[str, ...] = (),
        max_age: float = 172800.0,
        *,
        clock: Clock = system_clock,
    ) -> None:
        # itsdangerous signs with the last key and verifies with all of them.
        self._serializer = URLSafeTimedSerializer(
            [*old_secrets, secret], salt=_SALT, signer=_clock_signer(clock)
        )
        self.max_age = max_age
        self._clock = clock
        self._verified: dict[str, tuple[TokenClaims, int]] = {}  # token -> (claims, signed at)

    def token(self, job_id: str, provider: str) -> str:
        return str(self._serializer.dumps({"j": job_id, "p": provider}))

    def url(self, public_url: str, job_id: str, provider: str) -> str:
        return f"{public_url.rstrip('/')}/hooks/{provider}/{self.token(job_id, provider)}"

    def verify(self, token: str, provider: str) -> TokenClaims:
        """The token's claims for a webhook posted to `provider`'s route. A token checked once is
        remembered with its stamp (a provider posts the same URL for every report of a job): later
        checks only compare its age and provider, so the HMAC runs once per token, not per request."""
        known = self._verified.get(token)
        if known is not None and 0 <= int(self._clock().timestamp()) - known[1] <= int(self.max_age):
            claims = known[0]
        else:
            claims, stamp = self._check(token)
            if len(self._verified) >= VERIFIED_MAX:
                self._verified.clear()  # a bound, not an LRU: refilling costs one check per live token
            self._verified[token] = (claims, stamp)
        if claims.provider != provider:
            raise TokenMismatch("webhook token belongs to another provider")
        return claims

    def _check(self, token: str) -> tuple[TokenClaims, int]:
        try:
            data, stamp = self._serializer.loads(token, max_age=int(self.max_age), return_timestamp=True)
        except SignatureExpired:
            raise TokenExpired("webhook token expired") from None
        except (BadSignature, UnicodeEncodeError):  # a lone surrogate cannot be encoded to be checked
            raise TokenInvalid("webhook token is invalid") from None
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("j"), str)
            or not isinstance(data.get("p"), str)
        ):
            raise TokenInvalid("webhook token is invalid")
        return TokenClaims(job_id=data["j"], provider=data["p"]), int(stamp.timestamp())


def _clock_signer(clock: Clock) -> type[TimestampSigner]:
    """itsdangerous's signer with its stamp and age read from `clock` instead of `time.time()`."""

    class ClockSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(clock().timestamp())

    return ClockSigner
