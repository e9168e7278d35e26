"""Where a receiver's time goes, in %, from a py-spy raw profile (collapsed stacks).

    .venv/bin/py-spy record --pid PID --duration 25 --rate 200 --format raw -o profile.txt --nonblocking
    .venv/bin/python bench/profile_breakdown.py profile.txt

Each sample goes to the first part named below found walking its stack from the innermost frame out;
standard-library frames (json, hmac, datetime, ...) count for the code that called them, so `json.loads`
under the body parser counts as body parsing. Idle samples are not in py-spy's output by default.
"""

from __future__ import annotations

import sys
from collections import Counter

PARTS = (  # (part, substrings of a frame's file); the first part whose substring matches wins
    ("token (itsdangerous, signing.py)", ("itsdangerous/", "receiver/signing.py")),
    ("signature (HMAC of the body)", ("verify_signature", "signature_ok")),
    ("report parsing (provider mapping)", ("receiver/providers/",)),
    ("body reading and JSON checks (bodies.py)", ("receiver/bodies.py",)),
    ("store: SQLite statements and commit", ("receiver/store/sqlite.py",)),
    ("store: PostgreSQL driver and pool", ("psycopg", "receiver/store/postgres.py")),
    ("store: state machine and row decoding", ("receiver/store/",)),
    ("logging (structlog)", ("structlog/", "receiver/logs.py")),
    ("metrics (prometheus_client)", ("prometheus_client/", "receiver/metrics.py")),
    ("worker rounds", ("receiver/worker.py", "receiver/schedule.py")),
    ("route and service logic", ("receiver/",)),
    ("Starlette (routing, Request, responses)", ("starlette/",)),
    ("uvicorn HTTP protocol (httptools)", ("uvicorn/protocols", "httptools")),
    ("uvicorn other", ("uvicorn/",)),
    ("anyio (body deadline)", ("anyio/",)),
    ("event loop (asyncio, uvloop)", ("asyncio/", "uvloop")),
)


def part(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):
        for name, needles in PARTS:
            if any(needle in frame for needle in needles):
                return name
    return "other"


def main(path: str) -> None:
    counts: Counter[str] = Counter()
    with open(path, encoding="utf-8") as file:
        for line in file:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if stack:
                counts[part(stack)] += int(count)
    total = sum(counts.values())
    print(f"{total} samples")
    for name, n in counts.most_common():
        print(f"{100 * n / total:5.1f} %  {name}")


if __name__ == "__main__":
    main(sys.argv[1])
