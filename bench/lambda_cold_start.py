"""Cold start of the Lambda web function, as Lambda pays it: a fresh Python process imports
`receiver.serverless` (the init phase: settings, handlers, Receiver, Mangum), then takes its first
API Gateway event, then warm ones. Each figure is the median over `--runs` fresh processes.

    .venv/bin/python bench/lambda_cold_start.py [--runs 7] [--database-url postgresql://...]

The event is `GET /jobs?limit=1` with the admin token: the app's lifespan opens the store (a first
connection), one query runs, and the store is closed again, as on every invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
WARM = 20

PROBE = """
import json, sys, time
started = float(sys.argv[1])
t0 = time.perf_counter()
from receiver import serverless
t1 = time.perf_counter()
from tests.support.gateway import http_api_event
event = http_api_event("GET", "/jobs", headers={"authorization": "Bearer bench"}, query="limit=1")
assert serverless.handler(event, None)["statusCode"] == 200
t2 = time.perf_counter()
warm = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    serverless.handler(event, None)
    warm.append(time.perf_counter() - t)
print(json.dumps({"start": time.time() - (time.perf_counter() - t0) - started, "import": t1 - t0,
                  "first": t2 - t1, "warm": sorted(warm)[len(warm) // 2]}))
"""


def measure(database_url: str, runs: int) -> dict[str, float]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "RECEIVER_SECRET": "bench-secret-value",
        "RECEIVER_ADMIN_TOKEN": "bench",
        "RECEIVER_DATABASE_URL": database_url,
    }
    samples = []
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-c", PROBE, str(time.time()), str(WARM)],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        samples.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {key: statistics.median(s[key] for s in samples) for key in ("start", "import", "first", "warm")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with tempfile.TemporaryDirectory() as tmp, psycopg.connect(args.database_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        try:
            run(args.runs, {
                "sqlite": f"sqlite:///{tmp}/bench.db",
                "postgresql": f"{args.database_url}?options=-csearch_path%3D{schema}",
            })  # fmt: skip
        finally:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def run(runs: int, stores: dict[str, str]) -> None:
    print("| store | interpreter start | import (init) | first invocation | cold total | warm invocation |")
    print("|---|---|---|---|---|---|")
    for name, url in stores.items():
        f = measure(url, runs)
        total = f["start"] + f["import"] + f["first"]
        print(
            f"| {name} | {f['start'] * 1000:.0f} ms | {f['import'] * 1000:.0f} ms | "
            f"{f['first'] * 1000:.0f} ms | {total * 1000:.0f} ms | {f['warm'] * 1000:.1f} ms |"
        )


if __name__ == "__main__":
    main()
