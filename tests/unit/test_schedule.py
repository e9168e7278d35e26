"""Poll plans and delivery backoff: pure functions of time, checked on plain numbers."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from receiver.providers.registry import get
from receiver.schedule import MAX_STEP, MIN_GAP, retry_delay

SUBMITTED = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
REALISTIC = [5.0, 30.0, 150.0, 600.0, 3600.0]
# Both sides are rounded to whole microseconds by timedelta.
MICROSECOND = 1e-6


def poll_offsets(provider: str, expected: float) -> Iterator[float]:
    return get(provider).poll_plan(expected)


def next_poll_at(provider: str, submitted_at: datetime, now: datetime, expected: float) -> datetime:
    return get(provider).next_poll_at(submitted_at, now, expected)


def _first(provider: str, expected: float, n: int) -> list[float]:
    return list(itertools.islice(poll_offsets(provider, expected), n))


def _steps(offsets: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(offsets)]


def _polls_until(provider: str, expected: float, done_at: float) -> list[float]:
    """The offsets a worker following next_poll_at would poll at, up to the first that sees the end."""
    polls: list[float] = []
    now = SUBMITTED
    while True:
        at = next_poll_at(provider, SUBMITTED, now, expected)
        polls.append((at - SUBMITTED).total_seconds())
        if polls[-1] >= done_at:
            return polls
        now = at


def test_runbase_three_early_looks() -> None:
    assert _first("runbase", 150.0, 3) == pytest.approx([7.5, 22.5, 45.0])


def test_runbase_early_looks_keep_the_minimum_gap() -> None:
    assert all(offset >= MIN_GAP for offset in _first("runbase", 1.0, 3))


def test_runbase_is_dense_around_the_expected_time() -> None:
    offsets = [t for t in _first("runbase", 150.0, 40) if 0.8 * 150 <= t < 1.5 * 150]
    assert offsets == pytest.approx([120.0, 135.0, 150.0, 165.0, 180.0, 195.0, 210.0])
    assert 150.0 in offsets


def test_runbase_widens_after_the_dense_window() -> None:
    offsets = [t for t in _first("runbase", 150.0, 40) if t >= 1.5 * 150]
    steps = _steps(offsets)
    assert steps[0] > 15.0
    assert all(b >= a for a, b in itertools.pairwise(steps))
    assert steps[-1] > steps[0]


@pytest.mark.parametrize("expected", REALISTIC)
def test_runbase_offsets_strictly_increase_with_a_capped_step(expected: float) -> None:
    offsets = _first("runbase", expected, 200)
    steps = _steps(offsets)
    assert all(step > 0 for step in steps)
    cap = min(max(60.0, expected), MAX_STEP)
    assert max(steps) <= cap + MICROSECOND
    assert max(steps) == pytest.approx(cap)


@pytest.mark.parametrize("expected", REALISTIC)
def test_apiframe_waits_for_the_webhook_before_its_first_poll(expected: float) -> None:
    offsets = _first("apiframe", expected, 50)
    assert offsets[0] == pytest.approx(expected * 1.2)
    assert all(t >= expected * 1.2 for t in offsets)


@pytest.mark.parametrize("expected", [5.0, 30.0, 150.0, 600.0])
def test_apiframe_reconciliation_polls_widen_up_to_the_cap(expected: float) -> None:
    steps = _steps(_first("apiframe", expected, 50))
    assert all(step > 0 for step in steps)
    assert all(b >= a for a, b in itertools.pairwise(steps))
    assert max(steps) == pytest.approx(MAX_STEP)


def test_apiframe_step_starts_at_half_the_expected_time() -> None:
    assert _first("apiframe", 150.0, 4) == pytest.approx([180.0, 255.0, 405.0, 705.0])


@pytest.mark.parametrize("provider", ["runbase", "apiframe"])
@pytest.mark.parametrize("expected", REALISTIC)
def test_next_poll_is_always_at_least_the_minimum_gap_ahead(provider: str, expected: float) -> None:
    offsets = _first(provider, expected, 30)
    # Right at submit, at each planned poll, just before and just after it, and far past the plan.
    moments = [0.0, 10 * expected, 50 * expected]
    moments += [t + d for t in offsets for d in (-0.1, 0.0, 0.05, 0.3)]
    for elapsed in moments:
        now = SUBMITTED + timedelta(seconds=elapsed)
        at = next_poll_at(provider, SUBMITTED, now, expected)
        assert (at - now).total_seconds() >= MIN_GAP - MICROSECOND, (provider, expected, elapsed)


@pytest.mark.parametrize("provider", ["runbase", "apiframe"])
def test_next_poll_is_the_first_planned_offset_after_now(provider: str) -> None:
    offsets = _first(provider, 150.0, 10)
    for before, after in itertools.pairwise(offsets):
        now = SUBMITTED + timedelta(seconds=before)
        at = next_poll_at(provider, SUBMITTED, now, 150.0)
        assert (at - SUBMITTED).total_seconds() == pytest.approx(after)


def test_next_poll_at_submit_is_the_first_early_look() -> None:
    at = next_poll_at("runbase", SUBMITTED, SUBMITTED, 150.0)
    assert at == SUBMITTED + timedelta(seconds=7.5)


def test_runbase_plan_beats_a_naive_two_second_poller() -> None:
    expected, done_at = 150.0, 150.0
    ours = _polls_until("runbase", expected, done_at)
    naive = len(range(2, int(done_at) + 2, 2))
    assert naive == 75
    assert len(ours) <= naive / 5
    assert ours[-1] - done_at <= 0.1 * expected


@pytest.mark.parametrize("done_at", [120.0, 140.0, 150.001, 160.0, 200.0, 224.0])
def test_runbase_sees_a_completion_near_the_expected_time_within_a_tenth_of_it(done_at: float) -> None:
    ours = _polls_until("runbase", 150.0, done_at)
    assert ours[-1] - done_at <= 0.1 * 150.0 + MICROSECOND
    assert len(ours) < done_at / 2 / 4


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
