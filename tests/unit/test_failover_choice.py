"""Which providers a submit may go to, and which refusals send it on (receiver.failover)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from receiver.config import Settings, SettingsError
from receiver.failover import may_fail_over, parse_choice, providers_of
from receiver.providers.base import (
    AuthenticationError,
    Conflict,
    Forbidden,
    InsufficientCredits,
    InvalidRequest,
    NotSent,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    UnexpectedResponse,
)
from receiver.providers.registry import UnknownProvider

BOTH = replace(Settings(), apiframe_api_key="afk_1", runbase_api_key="rb_1")


@pytest.mark.parametrize(
    ("value", "choice"),
    [
        ("apiframe", "apiframe"),
        (" auto ", "auto"),
        ("runbase,apiframe", ["runbase", "apiframe"]),
        (["apiframe", "runbase", "apiframe"], ["apiframe", "runbase"]),
        (["runbase"], "runbase"),
    ],
)
def test_a_choice_is_a_name_auto_or_a_list(value: Any, choice: Any) -> None:
    assert parse_choice(value) == choice


@pytest.mark.parametrize("value", [None, "", "nope", ["apiframe", "nope"], [], 7, [7], {"a": 1}])
def test_anything_else_is_refused_naming_the_problem(value: Any) -> None:
    with pytest.raises(UnknownProvider):
        parse_choice(value)


def test_no_choice_takes_the_default() -> None:
    assert parse_choice(None, "auto") == "auto"


def test_auto_follows_the_order_and_leaves_out_providers_without_a_key() -> None:
    assert providers_of("auto", BOTH) == ["apiframe", "runbase"]
    assert providers_of("auto", replace(BOTH, provider_order=("runbase", "apiframe"))) == [
        "runbase",
        "apiframe",
    ]
    assert providers_of("auto", replace(BOTH, apiframe_api_key=None)) == ["runbase"]
    assert providers_of(["runbase", "apiframe"], replace(BOTH, runbase_api_key=None)) == ["apiframe"]
    with pytest.raises(SettingsError, match="APIFRAME_API_KEY, RUNBASE_API_KEY"):
        providers_of("auto", Settings())


def test_one_named_provider_is_used_as_named() -> None:
    assert providers_of("runbase", Settings()) == ["runbase"]


@pytest.mark.parametrize(
    "exc",
    [
        InsufficientCredits("apiframe", "Insufficient credits", status_code=402),
        Forbidden("runbase", "spend limit", status_code=403, code="api_key_spend_limit_exceeded"),
        NotSent("runbase", "could not connect"),
        ProviderUnavailable("apiframe", "Service unavailable", status_code=503),
        ProviderUnavailable("runbase", "Internal server error", status_code=500),
    ],
)
def test_a_refusal_the_next_provider_may_not_share_fails_over(exc: ProviderError) -> None:
    assert may_fail_over(exc)


def _after_lost(exc: ProviderError) -> ProviderError:
    exc.after_lost_answer = True
    return exc


@pytest.mark.parametrize(
    "exc",
    [
        InvalidRequest("apiframe", "prompt: too long", status_code=400),
        AuthenticationError("runbase", "invalid_api_key", status_code=401),
        Conflict("apiframe", "idempotency key reused", status_code=409),
        RateLimited("runbase", "slow down", status_code=429),  # goes on only past the bound
        ProviderUnavailable("runbase", "ReadTimeout: timed out"),  # sent, answer lost
        UnexpectedResponse("apiframe", "HTTP 200 answer is not a JSON object", status_code=200),
        _after_lost(ProviderUnavailable("apiframe", "Service unavailable", status_code=503)),
    ],
)
def test_a_refusal_every_provider_would_give_or_a_lost_answer_does_not(exc: ProviderError) -> None:
    assert not may_fail_over(exc)
