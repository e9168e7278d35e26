"""What a report says a job cost, and how `receiver costs` groups and sums costs."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from receiver.costs import day_start, grouping, sum_costs
from receiver.providers import apiframe, runbase
from receiver.store import JobCost

JOB_ID = "0b5e2f4c-3a41-4c6e-9d1e-2f1f9f1f2a10"


@pytest.mark.parametrize(
    ("report", "cost"),
    [
        ({"status": "COMPLETED", "result": {"videoUrl": "https://x/v.mp4"}, "creditCost": 12}, 12.0),
        ({"status": "FAILED", "error": "boom"}, 0.0),  # refunded; the failed webhook has no creditCost
        ({"status": "FAILED", "error": "boom", "creditCost": 12}, 0.0),
        ({"status": "PROCESSING", "progress": 40}, None),
        ({"status": "COMPLETED", "result": "https://x/v.mp4", "creditCost": -1}, None),
        ({"status": "COMPLETED", "result": "https://x/v.mp4", "creditCost": True}, None),
    ],
)
def test_apiframe_reports_credit_cost_net_of_the_refund_of_a_failed_job(
    report: dict[str, object], cost: float | None
) -> None:
    assert apiframe.map_status({"id": JOB_ID, **report}).cost == cost


@pytest.mark.parametrize("status", ["pending", "succeeded", "failed"])
def test_runbase_reports_cost_usd_at_every_stage_and_keeps_it_when_a_run_fails(status: str) -> None:
    run = {"id": "run_1", "status": status, "costUsd": 0.5, "output": {"urls": ["https://x/v.mp4"]}}
    assert runbase.map_status(run).cost == 0.5


def test_costs_are_summed_per_group_and_unit_and_never_across_units() -> None:
    costs = [
        JobCost("apiframe", "kling-3.0", {"team": "ads"}, 10.0),
        JobCost("apiframe", "kling-3.0", {"team": "ads"}, 0.0),
        JobCost("runbase", "kling-3.0", {"team": "ads"}, 0.5),
        JobCost("runbase", "kling-3.0", {}, 0.25),
    ]
    by_team = {(x.group, x.unit): (x.jobs, x.total) for x in sum_costs(costs, "metadata team")}
    assert by_team == {("ads", "credits"): (2, 10.0), ("ads", "usd"): (1, 0.5), ("(none)", "usd"): (1, 0.25)}
    by_model = {(x.group, x.unit): x.total for x in sum_costs(costs, "model")}
    assert by_model == {("kling-3.0", "credits"): 10.0, ("kling-3.0", "usd"): 0.75}


@pytest.mark.parametrize("by", ["prompt", "metadata", "provider team", ""])
def test_a_grouping_other_than_provider_model_or_metadata_key_is_refused(by: str) -> None:
    with pytest.raises(ValueError, match="--by"):
        grouping(by)


def test_the_budget_day_starts_at_midnight_utc() -> None:
    moment = datetime(2026, 12, 4, 23, 59, tzinfo=UTC)
    assert day_start(moment) == datetime(2026, 12, 4, tzinfo=UTC)


def test_slack_shows_the_cost_of_a_job_and_the_budget_events() -> None:
    from handlers.slack import build_message

    job = {"id": "job_1", "provider": "runbase", "model": "kling-3.0", "status": "failed", "cost": {"amount": 0.5,
           "unit": "usd", "source": "provider"}, "request": {"prompt": "a fox"}, "error": {"code": "provider_failed", "message": "x"}}  # fmt: skip
    message = build_message({"id": "evt_1", "type": "job.failed", "job": job})
    fields = [f["text"] for b in message["blocks"] if b["type"] == "section" for f in b.get("fields", [])]
    assert "*Cost*\n$0.50" in fields
    budget = {"provider": "apiframe", "day": "2026-12-04", "level": 80, "spent": 40.0, "limit": 50.0,
              "unit": "credits"}  # fmt: skip
    alert = build_message({"id": "evt_2", "type": "budget", "budget": budget})
    assert alert["text"] == "apiframe daily budget at 80%: 40 credits of 50 credits spent on 2026-12-04"
