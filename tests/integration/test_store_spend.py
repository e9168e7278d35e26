"""The daily budget checked where the job is recorded (`Store.create_job` with a SpendLimit): a job that
would not fit writes nothing, and submits racing from several processes (here: several stores, each its
own connections, on one database) never cross the budget together."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from receiver.events import Job, JobStatus, new_job_id
from receiver.store import OverBudget, SpendLimit, Store, open_store

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
DAY = T0.replace(hour=0)


def job(provider: str = "runbase") -> Job:
    return Job(id=new_job_id(), provider=provider, status=JobStatus.PENDING, request={}, created_at=T0)


@pytest.mark.anyio
async def test_a_job_that_would_not_fit_writes_nothing(store: Store) -> None:
    limit = SpendLimit(limit=1.0, estimate=0.4, since=DAY)
    first, second, third = job(), job(), job()
    assert await store.create_job(first, T0 + timedelta(hours=1), spend=limit)
    assert await store.create_job(second, T0 + timedelta(hours=1), spend=limit)
    with pytest.raises(OverBudget) as refused:
        await store.create_job(third, T0 + timedelta(hours=1), spend=limit)
    assert refused.value.committed == pytest.approx(0.8)  # two open jobs at the estimate
    assert await store.get_job(third.id) is None
    # Another provider's budget is its own; no limit, no check.
    assert await store.create_job(job("apiframe"), T0 + timedelta(hours=1), spend=limit)
    assert await store.create_job(job(), T0 + timedelta(hours=1))


@pytest.mark.anyio
async def test_submits_racing_from_several_processes_never_cross_the_budget(database_url: str) -> None:
    stores = [open_store(database_url) for _ in range(3)]
    for each in stores:
        await each.open()
    try:
        limit = SpendLimit(limit=5.0, estimate=1.0, since=DAY)

        async def submit(store: Store) -> bool:
            try:
                return await store.create_job(job(), T0 + timedelta(hours=1), spend=limit)
            except OverBudget:
                return False

        made = await asyncio.gather(*(submit(stores[i % 3]) for i in range(12)))
        assert made.count(True) == 5
        spent, open_jobs = await stores[0].spent_since("runbase", DAY)
        assert (spent, open_jobs) == (0.0, 5)
    finally:
        for each in stores:
            await each.close()
