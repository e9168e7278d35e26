"""A PostgreSQL restart costs the store no failed call: the pool checks a connection before lending it."""

from __future__ import annotations

import pytest

from receiver.store import open_store
from tests.support.pgcluster import private_cluster

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


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
