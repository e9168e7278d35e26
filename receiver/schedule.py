"""When to look again: the webhook reconciliation offsets and delivery backoff. Pure functions of time,
unit tested; receiver/planner.py plans polls with them."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

MIN_GAP = 0.2
MAX_STEP = 600.0


def webhook_plan(expected: float) -> Iterator[float]:
    """Seconds after submit at which a job whose provider sends webhooks is polled: nothing until the
    expected time plus a grace, then sparse reconciliation polls for the webhook that never came."""
    t, step = expected * 1.2, min(max(MIN_GAP, expected * 0.5), MAX_STEP)
    while True:
        yield t
        t += step
        step = min(step * 2, MAX_STEP)


def retry_delay(attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after `attempt` failures: base * 2^(attempt-1) plus up to 25% jitter, capped."""
    try:
        nominal = math.ldexp(base, attempt - 1)
    except OverflowError:  # past 2**1024: beyond any cap
        nominal = math.inf
    return min(cap, nominal * (1 + 0.25 * rand()))


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """`Retry-After` as seconds: a number of seconds or an HTTP date; None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)
