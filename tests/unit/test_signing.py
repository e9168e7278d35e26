"""WebhookSigner: a per-job token verifies for its job and provider only, within its age, across rotation."""

from __future__ import annotations

import pytest

from receiver.clock import VirtualClock
from receiver.signing import (
    TokenClaims,
    TokenError,
    TokenExpired,
    TokenInvalid,
    TokenMismatch,
    WebhookSigner,
)

SECRET = "current-secret-0123456789"
OLD = "old-secret-abcdefghij"


def _aged_token(max_age: float, age: float) -> tuple[WebhookSigner, str]:
    """A signer on a virtual clock and a token it made `age` seconds ago."""
    clock = VirtualClock()
    signer = WebhookSigner(SECRET, max_age=max_age, clock=clock)
    token = signer.token("job_1", "apiframe")
    clock.advance(age)
    return signer, token


def _refusal(signer: WebhookSigner, token: str, provider: str = "apiframe") -> TokenError:
    with pytest.raises(TokenError) as caught:
        signer.verify(token, provider)
    return caught.value


def _assert_discreet(error: TokenError, *values: str) -> None:
    for value in values:
        assert value not in str(error)
        assert value not in repr(error)


def test_round_trip_gives_back_job_and_provider() -> None:
    signer = WebhookSigner(SECRET)
    token = signer.token("job_abc", "apiframe")
    assert signer.verify(token, "apiframe") == TokenClaims(job_id="job_abc", provider="apiframe")


def test_token_is_url_safe_and_does_not_contain_the_secret() -> None:
    token = WebhookSigner(SECRET).token("job_abc", "apiframe")
    assert SECRET not in token
    assert all(c.isalnum() or c in "-_." for c in token)


def test_url_is_built_under_the_public_url() -> None:
    signer = WebhookSigner(SECRET)
    url = signer.url("https://hooks.example.com/", "job_abc", "apiframe")
    prefix = "https://hooks.example.com/hooks/apiframe/"
    assert url.startswith(prefix)
    assert signer.verify(url.removeprefix(prefix), "apiframe").job_id == "job_abc"


def test_each_job_gets_its_own_token() -> None:
    signer = WebhookSigner(SECRET)
    assert signer.token("job_1", "apiframe") != signer.token("job_2", "apiframe")


def test_tampered_token_is_invalid() -> None:
    signer = WebhookSigner(SECRET)
    token = signer.token("job_1", "apiframe")
    # The first character carries payload bits (the last one may hold only base64 padding bits).
    flipped = ("f" if token[0] != "f" else "g") + token[1:]
    error = _refusal(signer, flipped)
    assert isinstance(error, TokenInvalid)
    _assert_discreet(error, SECRET, flipped, token)


def test_payload_swapped_from_another_token_is_invalid() -> None:
    signer = WebhookSigner(SECRET)
    mine, theirs = signer.token("job_1", "apiframe"), signer.token("job_2", "apiframe")
    forged = theirs.split(".")[0] + "." + ".".join(mine.split(".")[1:])
    assert isinstance(_refusal(signer, forged), TokenInvalid)


def test_token_signed_with_another_secret_is_invalid() -> None:
    token = WebhookSigner("someone-elses-secret").token("job_1", "apiframe")
    assert isinstance(_refusal(WebhookSigner(SECRET), token), TokenInvalid)


@pytest.mark.parametrize("garbage", ["", "x", "not.a.token", "a" * 500, "..", "job_1", "%00%ff"])
def test_garbage_is_invalid(garbage: str) -> None:
    error = _refusal(WebhookSigner(SECRET), garbage)
    assert isinstance(error, TokenInvalid)
    _assert_discreet(error, SECRET)


def test_token_older_than_max_age_is_expired() -> None:
    signer, token = _aged_token(3600, 3601)
    error = _refusal(signer, token)
    assert isinstance(error, TokenExpired)
    _assert_discreet(error, SECRET, token)


def test_token_within_max_age_still_verifies() -> None:
    signer, token = _aged_token(3600, 3600)
    assert signer.verify(token, "apiframe").job_id == "job_1"


def test_zero_max_age_expires_a_token_made_seconds_ago() -> None:
    signer, token = _aged_token(0, 1)
    assert isinstance(_refusal(signer, token), TokenExpired)


def test_default_max_age_is_two_days() -> None:
    assert WebhookSigner(SECRET).max_age == 172800.0


def test_token_for_another_provider_is_a_mismatch() -> None:
    signer = WebhookSigner(SECRET)
    token = signer.token("job_1", "runbase")
    error = _refusal(signer, token, provider="apiframe")
    assert isinstance(error, TokenMismatch)
    _assert_discreet(error, SECRET, token)


def test_rotation_old_token_verifies_while_its_secret_is_listed() -> None:
    token = WebhookSigner(OLD).token("job_1", "apiframe")
    rotated = WebhookSigner(SECRET, old_secrets=(OLD,))
    assert rotated.verify(token, "apiframe").job_id == "job_1"


def test_rotation_signs_new_tokens_with_the_current_secret() -> None:
    rotated = WebhookSigner(SECRET, old_secrets=(OLD,))
    token = rotated.token("job_1", "apiframe")
    assert WebhookSigner(SECRET).verify(token, "apiframe").job_id == "job_1"
    assert isinstance(_refusal(WebhookSigner(OLD), token), TokenInvalid)


def test_rotation_old_token_is_refused_once_its_secret_is_removed() -> None:
    token = WebhookSigner(OLD).token("job_1", "apiframe")
    error = _refusal(WebhookSigner(SECRET), token)
    assert isinstance(error, TokenInvalid)
    _assert_discreet(error, SECRET, OLD, token)


def test_every_refusal_is_a_token_error() -> None:
    for cls in (TokenInvalid, TokenExpired, TokenMismatch):
        assert issubclass(cls, TokenError)


def test_a_token_verified_before_is_still_refused_once_too_old_or_on_another_route() -> None:
    clock = VirtualClock()
    signer = WebhookSigner(SECRET, max_age=60, clock=clock)
    token = signer.token("job_1", "apiframe")
    assert signer.verify(token, "apiframe") == TokenClaims("job_1", "apiframe")
    assert signer.verify(token, "apiframe") == TokenClaims("job_1", "apiframe")  # remembered
    assert isinstance(_refusal(signer, token, "runbase"), TokenMismatch)
    clock.advance(61)
    assert isinstance(_refusal(signer, token), TokenExpired)
