"""The webhook reconciliation offsets and delivery backoff: pure functions of time, on plain numbers.
The poll planner built on them is pinned in test_planner.py."""

from __future__ import annotations

import itertools

import pytest

from receiver.schedule import MAX_STEP, retry_delay, webhook_plan


def _first(expected: float, n: int) -> list[float]:
    return list(itertools.islice(webhook_plan(expected), n))


def _steps(offsets: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(offsets)]


@pytest.mark.parametrize("expected", [5.0, 30.0, 150.0, 600.0, 3600.0])
def test_the_webhook_plan_waits_for_the_webhook_before_its_first_poll(expected: float) -> None:
    offsets = _first(expected, 50)
    assert offsets[0] == pytest.approx(expected * 1.2)
    assert all(t >= expected * 1.2 for t in offsets)


@pytest.mark.parametrize("expected", [5.0, 30.0, 150.0, 600.0])
def test_reconciliation_polls_widen_up_to_the_cap(expected: float) -> None:
    steps = _steps(_first(expected, 50))
    assert all(step > 0 for step in steps)
    assert all(b >= a for a, b in itertools.pairwise(steps))
    assert max(steps) == pytest.approx(MAX_STEP)


def test_the_reconciliation_step_starts_at_half_the_expected_time() -> None:
    assert _first(150.0, 4) == pytest.approx([180.0, 255.0, 405.0, 705.0])


def test_retry_delay_doubles_from_the_base() -> None:
    no_jitter = [retry_delay(n, base=5.0, cap=3600.0, rand=lambda: 0.0) for n in range(1, 6)]
    assert no_jitter == [5.0, 10.0, 20.0, 40.0, 80.0]


def test_retry_delay_jitter_adds_at_most_a_quarter() -> None:
    for attempt in range(1, 6):
        low = retry_delay(attempt, base=5.0, cap=3600.0, rand=lambda: 0.0)
        high = retry_delay(attempt, base=5.0, cap=3600.0, rand=lambda: 1.0)
        assert high == pytest.approx(low * 1.25)
        assert low <= retry_delay(attempt, base=5.0, cap=3600.0, rand=lambda: 0.5) <= high


def test_retry_delay_is_capped() -> None:
    assert retry_delay(20, base=5.0, cap=3600.0, rand=lambda: 0.0) == 3600.0
    assert retry_delay(20, base=5.0, cap=3600.0, rand=lambda: 1.0) == 3600.0
    # The cap also bounds the jitter of a delay just under it.
    assert retry_delay(1, base=100.0, cap=110.0, rand=lambda: 1.0) == 110.0


def test_retry_delay_default_jitter_stays_in_bounds() -> None:
    for _ in range(200):
        assert 10.0 <= retry_delay(2, base=5.0, cap=3600.0) <= 12.5
