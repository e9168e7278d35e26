"""The poll planner's decisions as pure functions of the completion model, the job's history (submit,
last look) and the budget (receiver/planner.py), and the model itself (receiver/completion.py)."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta
from statistics import NormalDist

import pytest
from hypothesis import given
from hypothesis import strategies as st

from receiver.completion import (
    MAX_SAMPLES,
    MIN_SAMPLES,
    PRIOR_SIGMA,
    PRIOR_WEIGHT,
    Finished,
    Kind,
    Lognormal,
    Models,
    Running,
)
from receiver.planner import (
    ALLOWANCE,
    BATCH_GAP,
    FINISHING,
    TAIL_GAP,
    THRESHOLD,
    Due,
    Pace,
    batch_mates,
    chance,
    choose,
    next_look_at,
    polling_plan,
    pool,
    pool_fills,
    unspent,
    webhook_plan,
)
from receiver.schedule import MAX_STEP, MIN_GAP

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
PRIOR = Lognormal.prior(150.0)
RUNBASE = Kind("runbase", "kling-3.0", "pro", "5s", False)
OTHER = Kind("runbase", "kling-3.0", "standard", "10s", False)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# -- the model ---------------------------------------------------------------------------------------


def test_the_prior_puts_the_median_at_the_expected_time() -> None:
    assert PRIOR.quantile(0.5) == pytest.approx(150.0)
    assert PRIOR.sigma == PRIOR_SIGMA
    assert (PRIOR.samples, PRIOR.learned) == (0, False)


def test_a_kind_with_fewer_than_the_minimum_samples_keeps_the_prior() -> None:
    model = Lognormal.fit([60.0] * (MIN_SAMPLES - 1), 150.0)
    assert (model.mu, model.sigma) == (PRIOR.mu, PRIOR.sigma)
    assert model.samples == MIN_SAMPLES - 1
    assert not model.learned


def test_many_samples_outweigh_the_prior() -> None:
    """Samples at the quantiles of a lognormal (median 100 s, sigma 0.3): the fit is that lognormal,
    shrunk towards the prior as if the prior were PRIOR_WEIGHT more samples."""
    n = MAX_SAMPLES
    seconds = [100.0 * math.exp(0.3 * NormalDist().inv_cdf((i + 0.5) / n)) for i in range(n)]
    model = Lognormal.fit(seconds, 150.0)
    w = n / (n + PRIOR_WEIGHT)
    assert model.learned
    assert model.quantile(0.5) == pytest.approx(100.0 * (150.0 / 100.0) ** (1 - w), rel=1e-3)
    assert model.sigma == pytest.approx(0.3, abs=0.02)


def test_a_few_stuck_jobs_do_not_move_the_fit() -> None:
    usual = [100.0 + i for i in range(40)]
    clean, stuck = Lognormal.fit(usual, 150.0), Lognormal.fit([*usual, 3600.0, 3600.0, 3600.0], 150.0)
    assert stuck.quantile(0.5) == pytest.approx(clean.quantile(0.5), rel=0.03)
    assert stuck.sigma == pytest.approx(clean.sigma, rel=0.25)


def test_the_first_jobs_to_finish_pull_the_model_only_part_of_the_way() -> None:
    """Five fast jobs of a batch are no proof that the others are late: the prior still counts."""
    model = Lognormal.fit([100.0] * MIN_SAMPLES, 150.0)
    assert 100.0 < model.quantile(0.5) < 150.0
    assert model.quantile(0.99) > 150.0


def _batch(
    age: float, n: int = 50, median: float = 150.0, sigma: float = 0.25
) -> tuple[list[float], list[float]]:
    """A batch of `n` jobs submitted together, `age` seconds ago, whose times sit at the quantiles of a
    lognormal: the times of those finished, and the ages of those still running."""
    times = [median * math.exp(sigma * NormalDist().inv_cdf((i + 0.5) / n)) for i in range(n)]
    return [t for t in times if t <= age], [age for t in times if t > age]


@pytest.mark.parametrize("age", [135.0, 150.0, 170.0])
def test_running_jobs_keep_the_first_to_finish_from_pulling_the_model_short(age: float) -> None:
    """A third to two thirds of a batch done: on the finished alone the model says the rest are late;
    with the running ones counted as "at least their age" it stays near the truth (median 150 s)."""
    finished, running = _batch(age)
    alone, censored = Lognormal.fit(finished, 150.0), Lognormal.fit(finished, 150.0, running)
    assert alone.quantile(0.99) < 240.0  # the truth's p99 is 268 s
    assert censored.quantile(0.5) == pytest.approx(150.0, rel=0.05)
    assert censored.quantile(0.99) == pytest.approx(PRIOR.quantile(0.99), rel=0.08)
    assert censored.samples == alone.samples == len(finished)


def test_jobs_just_submitted_barely_move_the_model() -> None:
    """A running job younger than any finished one is redistributed over the model itself."""
    finished, _ = _batch(10**4, n=40, median=100.0)
    clean, young = Lognormal.fit(finished, 150.0), Lognormal.fit(finished, 150.0, [1.0] * 20)
    assert young.quantile(0.5) == pytest.approx(clean.quantile(0.5), rel=0.03)
    assert young.sigma == pytest.approx(clean.sigma, rel=0.1)


def test_running_jobs_of_a_kind_never_finished_leave_it_the_prior() -> None:
    models = Models.learn([Finished(RUNBASE, 100.0)] * 20, 150.0, [Running(OTHER, 400.0)] * 20)
    assert models.get(OTHER) == PRIOR
    assert models.get(RUNBASE) == Lognormal.fit([100.0] * 20, 150.0)


def test_kinds_are_told_apart_by_provider_model_mode_duration_and_audio() -> None:
    kind = Kind.of("runbase", "kling-3.0", {"prompt": "x", "mode": "pro", "duration": 5})
    assert kind == RUNBASE
    assert kind.label == "runbase kling-3.0 pro 5s silent"
    assert Kind.of("apiframe", "kling-3.0", {"generate_audio": True}).label == (
        "apiframe kling-3.0 default default audio"
    )


def test_models_learn_each_kind_from_its_newest_jobs_and_give_others_the_prior() -> None:
    other = OTHER
    finished = [Finished(RUNBASE, 60.0)] * MAX_SAMPLES + [Finished(RUNBASE, 600.0)] * 50
    models = Models.learn([*finished, *[Finished(other, 300.0)] * 3], 150.0)
    assert models.get(RUNBASE).quantile(0.5) < 100.0  # the 50 older, slow ones are past MAX_SAMPLES
    assert models.get(RUNBASE).samples == MAX_SAMPLES
    assert models.get(other).samples == 3
    assert models.get(Kind("apiframe", "kling-3.0", "pro", "5s", True)) == PRIOR


# -- when to look again ------------------------------------------------------------------------------


def test_chance_is_the_share_of_the_jobs_alive_at_the_last_look_that_finished_since() -> None:
    assert chance(PRIOR, 150.0, 150.0) == 0.0
    assert chance(PRIOR, 0.0, 150.0) == pytest.approx(0.5)
    assert chance(PRIOR, 150.0, PRIOR.quantile(0.75)) == pytest.approx(0.5)


def test_the_first_look_comes_when_the_threshold_share_may_have_finished() -> None:
    first = polling_plan(PRIOR, 0.0)
    assert PRIOR.cdf(first) == pytest.approx(THRESHOLD)
    assert first == pytest.approx(150.0 * math.exp(PRIOR_SIGMA * -1.4758), rel=1e-3)


def test_looks_are_densest_where_the_model_puts_the_end() -> None:
    looks = [0.0]
    while looks[-1] < 300.0:
        looks.append(polling_plan(PRIOR, looks[-1]))
    gaps = {round(a): b - a for a, b in itertools.pairwise(looks)}
    assert min(gaps.values()) < 5.0
    assert looks[1] - looks[0] > 90.0  # nothing is expected in the first minute and a half
    for last, after in itertools.pairwise(looks):
        if after < PRIOR.quantile(0.99):
            assert chance(PRIOR, last, after) == pytest.approx(THRESHOLD)


def test_past_the_models_p99_the_gap_grows_with_the_jobs_age() -> None:
    """A model that says the job must be done would otherwise look every MIN_GAP."""
    late = 2 * PRIOR.quantile(0.99)
    assert polling_plan(PRIOR, late) == pytest.approx(late * (1 + TAIL_GAP))


def test_a_look_is_never_more_than_the_maximum_step_after_the_last() -> None:
    slow = Lognormal.prior(20000.0)
    assert polling_plan(slow, 0.0) == MAX_STEP


def test_the_next_look_never_passes_the_deadline() -> None:
    deadline = _at(60.0)
    assert next_look_at(polling_plan, PRIOR, T0, T0, deadline) == deadline


def test_a_webhook_job_is_reconciled_well_past_the_models_p99() -> None:
    p99 = PRIOR.quantile(0.99)
    assert webhook_plan(PRIOR, 0.0) == pytest.approx(1.2 * p99)
    assert webhook_plan(PRIOR, 1.2 * p99) == pytest.approx(1.7 * p99)


models = st.builds(
    Lognormal,
    mu=st.floats(min_value=math.log(5.0), max_value=math.log(7200.0)),
    sigma=st.floats(min_value=0.05, max_value=2.0),
)


@given(model=models, end=st.floats(min_value=1.0, max_value=4 * 3600.0))
def test_looks_per_job_are_bounded_by_the_threshold(model: Lognormal, end: float) -> None:
    """Each look before the p99 leaves (1 - THRESHOLD) of the chance the job was still running: a job
    that ends at `end` takes at most ln(1/S(end)) / -ln(1 - THRESHOLD) looks there, plus those MAX_STEP
    forces, plus the tail's, whose gaps grow by TAIL_GAP."""
    looks, last = 0, 0.0
    while last < end:
        nxt = polling_plan(model, last)
        assert nxt - last >= MIN_GAP - 1e-9
        assert nxt - last <= MAX_STEP + 1e-9
        last, looks = nxt, looks + 1
    p99 = model.quantile(0.99)
    body = math.log(1 / max(1 - model.cdf(min(end, p99)), 0.01)) / -math.log(1 - THRESHOLD)
    tail = math.log(max(end, p99) / p99) / math.log(1 + TAIL_GAP) if end > p99 else 0.0
    assert looks <= body + tail + end / MAX_STEP + 3


# -- which job gets the next request -----------------------------------------------------------------


def _due(job_id: str, last: float, due_at: float, *, budgeted: bool = True, submitted: float = 0.0) -> Due:
    return Due(job_id, PRIOR, _at(submitted), _at(last) if last else None, _at(due_at), budgeted)


def test_a_slot_goes_to_the_job_most_likely_finished_since_its_last_look() -> None:
    now = _at(160.0)
    due = [_due("looked_now", 155.0, 158.0), _due("looked_long_ago", 110.0, 120.0), _due("mid", 140.0, 150.0)]
    assert [d.id for d in choose(due, now, 1, most=16)] == ["looked_long_ago"]
    assert [d.id for d in choose(due, now, 2, most=16)] == ["looked_long_ago", "mid"]


def test_jobs_without_a_budget_are_all_looked_at_and_take_no_slot() -> None:
    now = _at(200.0)
    due = [_due("apiframe", 0.0, 190.0, budgeted=False), _due("runbase", 120.0, 150.0)]
    assert [d.id for d in choose(due, now, 0, most=16)] == ["apiframe"]
    assert [d.id for d in choose(due, now, 1, most=16)] == ["runbase", "apiframe"]
    assert [d.id for d in choose(due, now, 1, most=1)] == ["runbase"]


def test_a_lone_job_not_yet_due_waits_for_its_own_plan() -> None:
    """Alone, the pool is the job's own chance: it fills when the job's plan says the look is due."""
    job = _due("alone", 120.0, polling_plan(PRIOR, 120.0))
    assert choose([job], _at(121.0), 1, most=16) == []
    fills = pool_fills([job], _at(121.0), _at(400.0))
    assert fills is not None
    assert abs((fills - job.due_at).total_seconds()) <= MIN_GAP


def test_jobs_sharing_the_budget_pool_their_chances_and_the_likeliest_gets_the_slot() -> None:
    """Ten jobs, none due by its own plan, each with a few percent of chance: together a request is
    worth sending, to the one looked at longest ago."""
    now = _at(130.0)
    jobs = [_due(f"job_{i}", 129.5 - 0.25 * i, 140.0) for i in range(10)]
    assert all(d.chance(now) < THRESHOLD for d in jobs)
    assert pool(jobs, now) >= THRESHOLD
    assert [d.id for d in choose(jobs, now, 1, most=16)] == ["job_9"]
    assert choose(jobs[:1], now, 1, most=16) == []


def test_a_slot_goes_to_the_video_that_has_likely_waited_longest_unseen() -> None:
    """`older`, near its end, looked at 4 s ago, is likelier finished than `younger`, looked at 12 s
    ago; but `younger`'s video, if there, has likely waited longer. Ranking by chance would look at
    `older` every few seconds and leave `younger` waiting; ranking by the expected wait gives each
    job gaps in 1 / sqrt(hazard), which makes the mean delay the least for the requests spent."""
    now = _at(200.0)
    older, younger = _due("older", 196.0, 197.0), _due("younger", 188.0, 189.0, submitted=80.0)
    assert older.chance(now) > younger.chance(now)
    assert older.waited(now) < younger.waited(now)
    assert [d.id for d in choose([older, younger], now, 1, most=16)] == ["younger"]


def test_equal_chances_go_to_the_job_looked_at_longest_ago() -> None:
    now = _at(100.0)
    jobs = [_due("recent", 80.0 + 1e-6, 90.0), _due("waiting", 80.0, 90.0)]
    assert [d.id for d in choose(jobs, now, 1, most=16)] == ["waiting"]


def test_a_job_past_its_models_tail_adds_nothing_to_the_pool_and_waits_for_its_own_plan() -> None:
    now = _at(PRIOR.quantile(0.999))
    late = [_due(f"late_{i}", now.timestamp() - T0.timestamp() - 5.0, 10**5) for i in range(20)]
    assert pool(late, now) == 0.0
    assert choose(late, now, 1, most=16) == []
    assert pool_fills(late, now, now + timedelta(seconds=10)) is None


def test_an_allowance_left_by_jobs_ended_before_spends_idle_slots_on_those_still_in_flight() -> None:
    """The last job of a batch, not due and alone in the pool: by its own plan it waits (as a lone job
    does); with the allowance its batch did not use, it takes the slot; past its model's tail too."""
    last = _due("last", 199.0, polling_plan(PRIOR, 199.0))
    now = _at(200.0)
    assert choose([last], now, 1, most=16) == []
    assert [d.id for d in choose([last], now, 1, most=16, spare=True)] == ["last"]
    assert choose([last], now, 0, most=16, spare=True) == []
    late_at = PRIOR.quantile(0.999)
    late = _due("late", late_at - 1.0, late_at + 30.0)
    assert late.pooled(_at(late_at)) == 0.0
    assert [d.id for d in choose([late], _at(late_at), 1, most=16, spare=True)] == ["late"]
    fresh = _due("fresh", 0.0, 290.0, submitted=200.0)  # submitted just now: nothing to find yet
    assert choose([fresh], _at(200.0), 1, most=16, spare=True) == []


def test_jobs_submitted_together_are_a_batch_and_a_stream_is_not() -> None:
    """Within BATCH_GAP of another budgeted job, link by link: a batch submitted over 8 s is one; a job
    submitted a minute later, or one that spends no budget, is not in it."""
    jobs = [
        _due("first", 0.0, 200.0, submitted=0.0),
        _due("second", 0.0, 200.0, submitted=BATCH_GAP * 0.4),
        _due("third", 0.0, 200.0, submitted=BATCH_GAP * 0.8),
        _due("next_minute", 0.0, 260.0, submitted=60.0),
        _due("webhooks", 0.0, 400.0, submitted=1.0, budgeted=False),
    ]
    assert batch_mates(jobs) == {"first", "second", "third"}
    assert batch_mates([jobs[0], jobs[3]]) == set()
    assert batch_mates(jobs[:1]) == set()


def test_a_batch_in_its_finishing_window_gets_every_slot_a_trickle_keeps_the_price() -> None:
    """Two jobs just looked at, early in the model's window (69 s of a 150 s median): together their
    chance is far from the price, so as two jobs a minute apart they wait; as a batch the slot goes to
    the one looked at longest ago. Before the window a batch waits too, and the pool fills where the
    window opens."""
    low = PRIOR.quantile(FINISHING[0])
    now = _at(low + 5.0)
    pair = [_due("a", low + 4.0, 140.0), _due("b", low + 4.5, 140.0)]
    assert pool(pair, now) < THRESHOLD
    assert choose(pair, now, 1, most=16) == []
    assert [d.id for d in choose(pair, now, 1, most=16, batched={"a", "b"})] == ["a"]
    assert choose(pair, now, 0, most=16, batched={"a", "b"}) == []
    early = [_due("a", low - 20.0, 140.0), _due("b", low - 19.0, 140.0)]
    assert choose(early, _at(low - 10.0), 1, most=16, batched={"a", "b"}) == []
    fills = pool_fills(early, _at(low - 10.0), _at(low + 10.0), batched={"a", "b"})
    assert fills is not None
    assert abs((fills - _at(low)).total_seconds()) <= MIN_GAP


def test_the_last_job_of_a_batch_gets_every_slot_until_its_models_p999() -> None:
    """Its batch-mates ended: past the model's p99, where a lone job's chance no longer counts, it is
    still looked at every slot; past the p99.9 it keeps its own widening plan."""
    high = PRIOR.quantile(FINISHING[1])
    late = _due("last", PRIOR.quantile(0.99) + 1.0, high + 60.0)
    now = _at(PRIOR.quantile(0.99) + 2.0)
    assert late.pooled(now) == 0.0
    assert choose([late], now, 1, most=16) == []
    assert [d.id for d in choose([late], now, 1, most=16, batched={"last"})] == ["last"]
    past = _due("last", high + 1.0, high + 60.0)
    assert choose([past], _at(high + 2.0), 1, most=16, batched={"last"}) == []


def test_a_job_passes_on_what_it_did_not_use_of_its_allowance() -> None:
    assert unspent(0) == pytest.approx(1 / THRESHOLD)
    assert unspent(4) == pytest.approx(ALLOWANCE - 4)
    assert unspent(40) == 0.0


def test_far_past_the_p99_the_chance_is_still_a_share_of_the_jobs_alive() -> None:
    """1 - cdf rounds to 0 there: the chance comes from the upper tail itself, so late jobs are told
    apart by how long ago they were looked at instead of all counting as certain."""
    model = Lognormal(math.log(150.0), 0.1)
    assert 0.0 < chance(model, 400.0, 401.0) < chance(model, 400.0, 402.0) < 1.0


LASTS = st.lists(st.floats(min_value=0.0, max_value=200.0), min_size=1, max_size=20)


@given(LASTS, st.floats(min_value=201.0, max_value=260.0))
def test_the_pool_fills_where_the_pooled_chance_first_reaches_the_threshold(
    lasts: list[float], now: float
) -> None:
    """Below the model's p99 (268 s) the pool only grows: the moment found is the first it is full."""
    jobs = [_due(f"job_{i}", last, 10**5) for i, last in enumerate(lasts)]
    start, until = _at(now - 60.0), _at(now)
    fills = pool_fills(jobs, start, until)
    if fills is None:
        assert pool(jobs, until) < THRESHOLD
    elif fills > start:
        assert pool(jobs, fills) >= THRESHOLD
        assert pool(jobs, fills - timedelta(seconds=MIN_GAP)) < THRESHOLD


@given(
    lasts=st.lists(st.floats(min_value=0.0, max_value=300.0), min_size=1, max_size=30),
    slots=st.integers(min_value=0, max_value=5),
)
def test_chosen_budgeted_looks_fit_the_slots_and_beat_every_due_one_left(
    lasts: list[float], slots: int
) -> None:
    now = _at(301.0)
    due = [_due(f"job_{i}", last, 300.0) for i, last in enumerate(lasts)]
    chosen = choose(due, now, slots, most=16)
    assert len(chosen) == min(slots, len(due))
    left = [d for d in due if d not in chosen]
    if chosen and left:
        # Ranked by the expected wait, which is computed apart from the chance: equal chances may
        # differ in the last bits (0.9973310322239477 against ...487 for jobs looked at 3 s apart).
        assert min(d.chance(now) for d in chosen) >= max(d.chance(now) for d in left) - 1e-12


# -- pacing ------------------------------------------------------------------------------------------


def test_budgeted_requests_are_paced_one_per_spacing() -> None:
    pace = Pace(0.5)
    assert pace.slots(0.0) == 1
    pace = pace.spent(0.0)
    assert [pace.slots(t) for t in (0.0, 0.49, 0.5)] == [0, 0, 1]


def test_a_busy_budget_moves_the_next_slot_to_when_it_frees() -> None:
    assert Pace(0.5).busy(10.0, 2.5).free_at == 12.5
    assert Pace(0.5).busy(10.0, None).free_at == 10.5
    assert Pace(0.5).busy(10.0, 0.0).free_at == 10.0 + MIN_GAP


@given(rounds=st.lists(st.floats(min_value=0.0, max_value=2.0), min_size=1, max_size=200))
def test_a_paced_worker_never_sends_denser_than_the_budget(rounds: list[float]) -> None:
    """Whenever rounds come, the requests the pace lets out never exceed limit per window."""
    limit, window = 20, 10.0
    pace, now, sent = Pace(window / limit), 0.0, []
    for gap in rounds:
        now += gap
        if pace.slots(now):
            sent.append(now)
            pace = pace.spent(now)
    for i, start in enumerate(sent):
        assert sum(1 for t in sent[i:] if t < start + window) <= limit
