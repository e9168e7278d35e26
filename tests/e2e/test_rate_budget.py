"""`receiver serve` keeps its Runbase requests inside the per-key budget, as the emulator counts them."""

from __future__ import annotations

import pytest
from conftest import World, wait_until

LIMIT, WINDOW = 5, 10.0


def most_in_any_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max((sum(1 for u in times[i:] if u < t + window) for i, t in enumerate(times)), default=0)


@pytest.mark.parametrize(
    "world",
    [
        {
            "env": {"RUNBASE_RATE_LIMIT": str(LIMIT)},
            "runbase": {"rate_limit": LIMIT, "rate_window": WINDOW, "delay": 1.0},
        }
    ],
    indirect=True,
)
def test_serve_never_exceeds_the_runbase_budget_in_any_window(world: World) -> None:
    world.serve()
    with world.admin() as admin:
        ids = [
            admin.post("/jobs", json={"provider": "runbase", "prompt": f"lamp {n}"}).json()["id"]
            for n in range(3)
        ]
        wait_until(
            lambda: all(admin.get(f"/jobs/{i}").json()["status"] == "succeeded" for i in ids), timeout=60
        )
    requests = list(world.runbase.requests)

    assert [r for r in requests if r["status"] == 429] == []
    assert most_in_any_window([r["t"] for r in requests], WINDOW) <= LIMIT
    assert len(requests) > LIMIT
