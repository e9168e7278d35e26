"""A PostgreSQL restart costs the store no failed call: the pool checks a connection before lending it
(a progress record, lent one unchecked, runs again on a checked one when it fails), and a store opened
while the server restarts waits for it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from receiver.config import SettingsError
from receiver.events import Job, JobStatus, new_job_id
from receiver.store import Progressed, Update, open_store
from tests.support.pgcluster import private_cluster
from tests.support.waiting import wait_until_async

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


@contextmanager
def debug_logs() -> Iterator[list[dict[str, Any]]]:
    """Every log entry, debug ones too, whatever level an earlier test configured."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with capture_logs() as logs:
            yield logs
    finally:
        structlog.configure(**saved)


async def test_every_call_after_a_restart_succeeds() -> None:
    with private_cluster() as cluster:
        store = open_store(cluster.url)
        await store.open()
        try:
            assert await store.list_jobs() == []
            cluster.restart()  # every pooled connection is now dead
            for _ in range(12):  # more calls than the pool holds connections
                assert await store.list_jobs() == []
            assert await store.next_due() is None
        finally:
            await store.close()


async def test_every_progress_record_after_a_restart_succeeds() -> None:
    with private_cluster() as cluster:
        store = open_store(cluster.url)
        await store.open()
        try:
            now = datetime.now(UTC)
            job = Job(
                id=new_job_id(), provider="apiframe", status=JobStatus.PENDING, request={}, created_at=now
            )
            await store.create_job(job, now + timedelta(hours=1))
            first = await store.record_progress(job.id, Update(JobStatus.RUNNING, progress=1))
            cluster.restart()  # every pooled connection is now dead
            after = [  # more records than the pool holds connections
                await store.record_progress(job.id, Update(JobStatus.RUNNING, progress=p))
                for p in range(2, 14)
            ]
            stored = await store.get_job(job.id)
        finally:
            await store.close()
    assert first == Progressed(JobStatus.RUNNING, changed=True)
    assert after == [Progressed(JobStatus.RUNNING, changed=True)] * 12
    assert stored is not None
    assert stored.progress == 13


async def test_a_store_opened_while_the_server_is_down_waits_for_it() -> None:
    """A process started during a restart (a supervisor's restart of a killed worker) used to exit at
    once with "cannot use PostgreSQL: Connection refused", as if its URL were wrong."""
    with private_cluster() as cluster:
        cluster.stop()
        store = open_store(cluster.url, timeout=60)
        with debug_logs() as logs:
            opening = asyncio.create_task(store.open())
            await wait_until_async(lambda: any(e["event"] == "store.waiting" for e in logs), timeout=30)
            assert not opening.done()
            await asyncio.to_thread(cluster.start)
            await opening
        try:
            assert await store.list_jobs() == []
        finally:
            await store.close()


async def test_a_wrong_database_name_is_refused_without_waiting() -> None:
    with private_cluster() as cluster:
        store = open_store(cluster.url.rsplit("/", 1)[0] + "/no_such_db", timeout=600)
        with capture_logs() as logs, pytest.raises(SettingsError, match="no_such_db"):
            await store.open()
        assert [e for e in logs if e["event"] == "store.waiting"] == []
