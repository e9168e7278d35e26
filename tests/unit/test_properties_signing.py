"""Webhook tokens: no forgery from any change to a token, and a token binds one provider and one secret.

What a changed token may still do, precisely: a token is `payload.timestamp.signature` (a compressed
payload starts with one more dot), and the signature is an HMAC over the exact text before the last
dot, so any change to that text fails. The signature segment's UTF-8 bytes are read by a lenient base64
decoder (binascii's non-strict mode): bytes outside the alphabet are skipped, the unused low bits of the
last character are ignored, missing padding is added and extra padding accepted. A change that leaves
the decoded signature bytes the same verifies, with the same claims, as the untouched token; nothing
else verifies.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from itsdangerous.encoding import base64_decode
from itsdangerous.exc import BadData

from receiver.providers.registry import NAMES
from receiver.signing import TokenClaims, TokenError, TokenInvalid, TokenMismatch, WebhookSigner

SECRET = "current-secret-0123456789"
URL_SAFE = string.ascii_letters + string.digits + "-_"

secrets_ = st.text(min_size=1, max_size=40)
job_ids = st.text(min_size=1, max_size=40)
providers = st.sampled_from(NAMES) | st.text(min_size=1, max_size=20)
# The token's own alphabet and separators, and any other text a URL path can carry.
characters = st.sampled_from(URL_SAFE + ".=") | st.characters(exclude_categories=["Cs"])


@st.composite
def mutations(draw: st.DrawFn, token: str, chars: st.SearchStrategy[str] = characters) -> str:
    """`token` with one character replaced, inserted or deleted, cut short, or extended."""
    kind = draw(st.sampled_from(["replace", "insert", "delete", "truncate", "extend"]))
    at = draw(st.integers(min_value=0, max_value=len(token) - 1))
    if kind == "replace":
        return token[:at] + draw(chars.filter(lambda c: c != token[at])) + token[at + 1 :]
    if kind == "insert":
        return token[:at] + draw(chars) + token[at:]
    if kind == "delete":
        return token[:at] + token[at + 1 :]
    if kind == "truncate":
        return token[:at]
    return token + draw(st.text(chars, min_size=1, max_size=8))


def _same_signed_text(mutated: str, token: str) -> bool:
    """Same text before the last dot, and a signature segment that decodes, as itsdangerous decodes it
    (from the token's UTF-8 bytes), to the same bytes."""
    signed, _, signature = token.rpartition(".")
    mutated_signed, dot, mutated_signature = mutated.rpartition(".")
    if not dot or mutated_signed != signed:
        return False
    try:
        return base64_decode(mutated_signature.encode()) == base64_decode(signature.encode())
    except (UnicodeEncodeError, BadData):
        return False


@given(job_id=job_ids, provider=providers, data=st.data())
def test_no_change_to_a_token_verifies_to_anything_else(
    job_id: str, provider: str, data: st.DataObject
) -> None:
    signer = WebhookSigner(SECRET)
    token = signer.token(job_id, provider)
    mutated = data.draw(mutations(token))
    assume(mutated != token)
    try:
        claims = signer.verify(mutated, provider)
    except TokenError:
        return
    assert _same_signed_text(mutated, token), f"{mutated!r} verified"
    assert claims == TokenClaims(job_id=job_id, provider=provider)


@given(job_id=job_ids, other_job=job_ids, data=st.data())
def test_segments_spliced_from_two_tokens_do_not_verify(
    job_id: str, other_job: str, data: st.DataObject
) -> None:
    assume(job_id != other_job)
    signer = WebhookSigner(SECRET)
    mine = signer.token(job_id, "apiframe").rsplit(".", 2)
    theirs = signer.token(other_job, "apiframe").rsplit(".", 2)
    picks = data.draw(st.tuples(st.booleans(), st.booleans(), st.booleans()))
    spliced = ".".join(a if pick else b for pick, a, b in zip(picks, mine, theirs, strict=True))
    assume(spliced not in (".".join(mine), ".".join(theirs)))
    with pytest.raises(TokenInvalid):
        signer.verify(spliced, "apiframe")


@given(job_id=job_ids, provider=providers, other=providers)
def test_a_token_for_one_provider_never_verifies_for_another(job_id: str, provider: str, other: str) -> None:
    assume(provider != other)
    signer = WebhookSigner(SECRET)
    token = signer.token(job_id, provider)
    assert signer.verify(token, provider) == TokenClaims(job_id=job_id, provider=provider)
    with pytest.raises(TokenMismatch):
        signer.verify(token, other)


@given(
    job_id=job_ids, provider=providers, secret=secrets_, other=secrets_, olds=st.lists(secrets_, max_size=3)
)
def test_a_token_signed_with_any_other_secret_is_refused(
    job_id: str, provider: str, secret: str, other: str, olds: list[str]
) -> None:
    assume(other != secret and other not in olds)
    token = WebhookSigner(other).token(job_id, provider)
    with pytest.raises(TokenInvalid):
        WebhookSigner(secret, tuple(olds)).verify(token, provider)


@given(
    job_id=job_ids,
    provider=providers,
    old=secrets_,
    new=secrets_,
    others=st.lists(secrets_, max_size=3),
    position=st.integers(min_value=0, max_value=3),
)
def test_a_token_signed_by_an_old_secret_verifies_while_the_old_secret_is_listed(
    job_id: str, provider: str, old: str, new: str, others: list[str], position: int
) -> None:
    assume(old != new and old not in others)
    token = WebhookSigner(old).token(job_id, provider)
    listed = (*others[:position], old, *others[position:])
    claims = WebhookSigner(new, listed).verify(token, provider)
    assert claims == TokenClaims(job_id=job_id, provider=provider)
    with pytest.raises(TokenInvalid):
        WebhookSigner(new, tuple(others)).verify(token, provider)
    # Tokens the rotated signer makes verify with the new secret alone.
    fresh = WebhookSigner(new, listed).token(job_id, provider)
    assert WebhookSigner(new).verify(fresh, provider) == claims


@given(data=st.data())
def test_a_token_with_unencodable_text_is_refused_not_an_error(data: st.DataObject) -> None:
    """A lone surrogate cannot be encoded as UTF-8: itsdangerous's UnicodeEncodeError escaped verify."""
    signer = WebhookSigner(SECRET)
    token = signer.token("job_1", "apiframe")
    mutated = data.draw(mutations(token, st.characters(categories=["Cs"])))
    assume(mutated != token)
    try:
        claims = signer.verify(mutated, "apiframe")
    except TokenError:
        return
    assert _same_signed_text(mutated, token)
    assert claims == TokenClaims(job_id="job_1", provider="apiframe")


@pytest.mark.parametrize("token_end", ["\ud800", "é\udfff"])
def test_a_lone_surrogate_in_a_token_is_invalid(token_end: str) -> None:
    signer = WebhookSigner(SECRET)
    token = signer.token("job_1", "apiframe")
    with pytest.raises(TokenInvalid):
        signer.verify(token[:10] + token_end + token[10:], "apiframe")
