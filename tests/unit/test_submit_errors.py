"""Which failed submits may have made a job (`answer_lost`): those are never called refusals, never
failed over, and are sent again only with an idempotency key."""

from __future__ import annotations

import asyncio

import pytest

from receiver.clock import VirtualClock
from receiver.providers.apiframe import parse_error
from receiver.providers.base import (
    InsufficientCredits,
    InvalidRequest,
    NotSent,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    UnexpectedResponse,
    answer_lost,
)
from receiver.providers.http import ProviderHTTP, transient


@pytest.mark.parametrize(
    "exc",
    [
        ProviderUnavailable("runbase", "ReadTimeout: timed out"),  # sent, no answer
        UnexpectedResponse("apiframe", "HTTP 200 answer is not a JSON object", status_code=200),
        UnexpectedResponse("runbase", "run object without an id", status_code=201),
    ],
)
def test_a_submit_sent_without_a_readable_answer_is_lost(exc: ProviderError) -> None:
    assert answer_lost(exc)


@pytest.mark.parametrize(
    "exc",
    [
        NotSent("runbase", "could not connect"),  # never arrived: no job
        ProviderUnavailable("runbase", "Internal server error", status_code=500),  # answered: refused
        InsufficientCredits("apiframe", "Insufficient credits", status_code=402),
        InvalidRequest("apiframe", "prompt: too long", status_code=400),
        RateLimited("runbase", "slow down", status_code=429),
    ],
)
def test_an_answered_or_unsent_submit_is_not_lost(exc: ProviderError) -> None:
    assert not answer_lost(exc)


def _http() -> ProviderHTTP:
    return ProviderHTTP(
        "apiframe",
        "http://127.0.0.1:9",
        api_key="k",
        auth_header="X-API-Key",
        parse_error=parse_error,
        clock=VirtualClock(),
    )


@pytest.mark.parametrize(
    ("last", "lost"),
    [
        (ProviderUnavailable("apiframe", "Service unavailable", status_code=503), True),
        (RateLimited("apiframe", "slow down", status_code=429, retry_after=0.0), True),
        (InsufficientCredits("apiframe", "Insufficient credits", status_code=402), False),
    ],
)
def test_a_retry_after_a_lost_answer_keeps_it_lost_unless_its_answer_settles_it(
    last: ProviderError, lost: bool
) -> None:
    """With the same Idempotency-Key, a 402 on the retry says no job exists (one would have been
    returned); a 503 or a 429 says nothing about what the first attempt made."""
    answers: list[ProviderError] = [ProviderUnavailable("apiframe", "ReadTimeout: timed out"), last]
    http = _http()

    async def call(attempt: int) -> dict[str, object]:
        raise answers[min(attempt, len(answers)) - 1]

    async def run() -> ProviderError:
        http.max_attempts = 2
        try:
            await http.retrying(call, on=transient(60.0))
        except ProviderError as exc:
            return exc
        finally:
            await http.aclose()
        raise AssertionError("no error")

    clock = http._clock
    assert isinstance(clock, VirtualClock)

    async def driven() -> ProviderError:
        task = asyncio.create_task(run())
        while not task.done():
            await asyncio.sleep(0)
            for deadline in clock.sleepers:
                clock.advance_to(deadline)
        return await task

    error = asyncio.run(driven())
    assert error is last
    assert answer_lost(error) is lost
