"""What a refused submit records: a refusal, or `submit_unknown` when a run may exist that we cannot name."""

from __future__ import annotations

import pytest

from receiver.providers.base import (
    InsufficientCredits,
    NotSent,
    ProviderError,
    ProviderUnavailable,
    UnexpectedResponse,
)
from receiver.service import submit_error


def test_a_runbase_submit_sent_without_an_answer_is_submit_unknown() -> None:
    error = submit_error("runbase", ProviderUnavailable("runbase", "ReadTimeout: timed out"))
    assert error.code == "submit_unknown"
    assert "runbase has no idempotency key" in error.message


@pytest.mark.parametrize(
    "exc",
    [
        NotSent("runbase", "could not connect"),  # never arrived: no run
        ProviderUnavailable("runbase", "Internal server error", status_code=500),  # answered: refused
        UnexpectedResponse("runbase", "answer is not a JSON object", status_code=201),
        InsufficientCredits("runbase", "Insufficient balance", status_code=402, code="insufficient_balance"),
    ],
)
def test_other_runbase_failures_are_the_providers_refusal(exc: ProviderError) -> None:
    assert submit_error("runbase", exc) == exc.to_job_error()


def test_apiframe_has_idempotency_so_a_lost_answer_is_an_ordinary_failure() -> None:
    exc = ProviderUnavailable("apiframe", "ReadTimeout: timed out")
    assert submit_error("apiframe", exc) == exc.to_job_error()
