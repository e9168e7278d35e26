"""Poll plans, the rate budget they spend, and delivery backoff, for any times and settings.

What the code lets us state about polling (receiver/schedule.py, the plans in the provider registry,
and the worker, which clamps every next poll to the job's deadline, RECEIVER_JOB_TIMEOUT after
submit, and times the job out once the deadline has passed):
- the next poll is at least MIN_GAP after now, and a later `now` never gives an earlier poll;
- Runbase (no webhooks) is never left unlooked-at for more than MAX_STEP + MIN_GAP; Apiframe is not
  polled before 1.2 x the model's p99, which is beyond the expected time (its webhook is due), and
  after that no gap exceeds it either;
- a worker following the plan polls at most up to the deadline, and its last look before the
  deadline is within MAX_STEP + MIN_GAP of it;
- N Runbase jobs submitted together, each polled by the plan through LocalBudget on a fake clock,
  never put more than RUNBASE_RATE_LIMIT requests into any window, wherever between sending and
  answer the provider counts a request.
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from receiver.completion import Lognormal
from receiver.providers.ratelimit import LocalBudget
from receiver.providers.registry import NAMES, get
from receiver.schedule import MAX_STEP, MIN_GAP, retry_delay

SUBMITTED = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
# Offsets go through timedelta, which rounds to whole microseconds.
MICROSECOND = 1e-6

expected_times = st.floats(min_value=0.5, max_value=7200.0)
elapsed_times = st.floats(min_value=0.0, max_value=2 * 86400.0)


def _next(provider: str, elapsed: float, expected: float) -> float:
    """Seconds after submit of the next poll after one `elapsed` seconds after submit, planned on the
    model a kind of job has before any of its jobs finished (the prior of RECEIVER_EXPECTED_SECONDS)."""
    now = SUBMITTED + timedelta(seconds=elapsed)
    return (get(provider).next_poll_at(SUBMITTED, now, Lognormal.prior(expected)) - SUBMITTED).total_seconds()


def _elapsed(seconds: float) -> float:
    """`seconds` as next_poll_at sees it, rounded to the microsecond like every stored time."""
    return timedelta(seconds=seconds).total_seconds()


@given(provider=st.sampled_from(NAMES), expected=expected_times, elapsed=elapsed_times)
def test_the_next_poll_is_at_least_the_minimum_gap_ahead(
    provider: str, expected: float, elapsed: float
) -> None:
    assert _next(provider, elapsed, expected) - _elapsed(elapsed) >= MIN_GAP - MICROSECOND


@given(
    provider=st.sampled_from(NAMES),
    expected=expected_times,
    elapsed=elapsed_times,
    later=st.floats(min_value=0.0, max_value=86400.0),
)
def test_a_later_now_never_gives_an_earlier_poll(
    provider: str, expected: float, elapsed: float, later: float
) -> None:
    assert _next(provider, elapsed + later, expected) >= _next(provider, elapsed, expected)


@given(expected=expected_times, elapsed=elapsed_times)
def test_runbase_is_never_left_unlooked_at_longer_than_the_maximum_step(
    expected: float, elapsed: float
) -> None:
    assert _next("runbase", elapsed, expected) - _elapsed(elapsed) <= MAX_STEP + MIN_GAP + MICROSECOND


@given(expected=expected_times, elapsed=elapsed_times)
def test_apiframe_waits_for_its_webhook_then_keeps_looking(expected: float, elapsed: float) -> None:
    at = _next("apiframe", elapsed, expected)
    assert at >= 1.2 * expected - MICROSECOND
    if elapsed >= 1.2 * expected:
        assert at - _elapsed(elapsed) <= MAX_STEP + MIN_GAP + MICROSECOND


@settings(max_examples=50)  # each example walks a whole job, up to thousands of polls
@given(
    provider=st.sampled_from(NAMES),
    expected=expected_times,
    timeout=st.floats(min_value=60.0, max_value=4 * 3600.0),
    lateness=st.lists(st.floats(min_value=0.0, max_value=5.0), min_size=1, max_size=20),
)
def test_a_worker_following_the_plan_stops_at_the_deadline_and_looks_close_before_it(
    provider: str, expected: float, timeout: float, lateness: list[float]
) -> None:
    """As the worker does: the next poll from the time the last one finished, clamped to the deadline."""
    polls: list[float] = []
    now = 0.0
    while now < timeout:
        at = min(_next(provider, now, expected), timeout)
        assert at > now
        polls.append(at)
        now = at + lateness[len(polls) % len(lateness)]
    assert polls == sorted(polls)
    assert polls[-1] <= timeout
    before_deadline = [t for t in polls if t < timeout]
    if provider == "runbase":
        last_look = before_deadline[-1] if before_deadline else 0.0
        assert timeout - last_look <= MAX_STEP + MIN_GAP + max(lateness) + MICROSECOND


class FakeTime:
    """Seconds since submit, moved only by the code under test: a wait moves it forward by its length
    (several tasks waiting at once each move it: a burstier schedule than real time, never a backward
    one, which is all the budget's guarantee relies on)."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)

    async def until(self, moment: float) -> None:
        await self.sleep(max(0.0, moment - self.now))


async def _poll_together(
    jobs: int, expected: float, timeout: float, budget: LocalBudget, time: FakeTime, latencies: list[float]
) -> list[tuple[float, float]]:
    """(sent, answered) of every status request made for `jobs` Runbase jobs submitted at once and still
    running, each polled concurrently, as the worker polls claimed jobs, when its plan says, through the
    budget, until the deadline."""
    requests: list[tuple[float, float]] = []

    async def follow(job: int) -> None:
        at = _next("runbase", 0.0, expected)
        while True:
            await time.until(at)
            if time.now >= timeout:
                return  # overdue: the worker times the job out instead of polling it
            async with budget.slot("runbase:key"):
                sent = time.now
                await time.sleep(latencies[(job + len(requests)) % len(latencies)])
            requests.append((sent, time.now))
            at = min(_next("runbase", time.now, expected), timeout)

    await asyncio.gather(*(follow(job) for job in range(jobs)))
    return requests


def _most_counted_in_one_window(requests: list[tuple[float, float]], window: float) -> int:
    """The most requests a provider can count in one window of `window` seconds, counting each
    anywhere between its sending and its answer: a set fits in one window exactly when its last sending
    is less than a window after its first answer."""
    most = 0
    for last_sent, _ in requests:
        fits = [1 for sent, answered in requests if sent <= last_sent and answered > last_sent - window]
        most = max(most, len(fits))
    return most


@settings(max_examples=60)
@given(
    jobs=st.integers(min_value=1, max_value=25),
    expected=st.floats(min_value=5.0, max_value=600.0),
    timeout=st.floats(min_value=60.0, max_value=1200.0),
    limit=st.integers(min_value=1, max_value=30),
    window=st.floats(min_value=1.0, max_value=60.0),
    latencies=st.lists(st.floats(min_value=0.0, max_value=3.0), min_size=1, max_size=10),
)
def test_jobs_submitted_together_never_exceed_the_rate_limit_in_any_window(
    jobs: int, expected: float, timeout: float, limit: int, window: float, latencies: list[float]
) -> None:
    assume(_next("runbase", 0.0, expected) < timeout)  # some job is looked at before it times out
    time = FakeTime()
    budget = LocalBudget(limit, window, clock=time.clock, sleep=time.sleep)
    requests = asyncio.run(_poll_together(jobs, expected, timeout, budget, time, latencies))
    assert requests
    assert _most_counted_in_one_window(requests, window) <= limit


# Any attempt, past the 2**1024 a float can hold, any base and cap, and any jitter draw.
backoffs = {
    "attempt": st.integers(min_value=1, max_value=5000),
    "base": st.floats(min_value=0.0, max_value=1e6),
    "cap": st.floats(min_value=0.0, max_value=1e7),
    "jitter": st.floats(min_value=0.0, max_value=1.0),
}


@given(**backoffs)
def test_retry_delay_is_the_nominal_wait_plus_at_most_a_quarter_capped(
    attempt: int, base: float, cap: float, jitter: float
) -> None:
    delay = retry_delay(attempt, base, cap, rand=lambda: jitter)
    try:
        nominal = math.ldexp(base, attempt - 1)
    except OverflowError:
        nominal = math.inf
    assert min(cap, nominal) <= delay <= min(cap, 1.25 * nominal)


@given(**backoffs)
def test_retry_delay_never_shrinks_from_one_attempt_to_the_next(
    attempt: int, base: float, cap: float, jitter: float
) -> None:
    def delay(n: int) -> float:
        return retry_delay(n, base, cap, rand=lambda: jitter)

    assert delay(attempt) <= delay(attempt + 1)


@pytest.mark.parametrize("attempt", [1025, 1100, 10_000])
def test_retry_delay_of_a_very_late_attempt_is_the_cap(attempt: int) -> None:
    """A handler configured with max_attempts above 1025 reached the 1025th attempt: 5 * 2**1024 does not
    fit a float, and the OverflowError escaped the worker's delivery, which then failed every round."""
    assert retry_delay(attempt, base=5.0, cap=3600.0, rand=lambda: 0.5) == 3600.0
