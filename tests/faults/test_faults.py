"""The fault suite's own checks: its secret scanner finds what it must, and a short run of the real
processes through kills and provider faults ends with every figure that must be zero at zero."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.faults.driver import MUST_BE_ZERO, RECEIVER_SECRET, scan_for_secrets

ROOT = Path(__file__).resolve().parents[2]


def test_the_scanner_finds_a_secret_in_a_log_and_names_the_log():
    logs = {
        "serve-1.log": '{"event": "job_submitted", "url": "http://h/hooks/apiframe/tok.en"}\n',
        "worker-2.log": f'{{"event": "boom", "error": "bad key {RECEIVER_SECRET}"}}\n',
    }
    assert scan_for_secrets(logs, [RECEIVER_SECRET, "tok.en", ""]) == [
        ("serve-1.log", "tok.en"),
        ("worker-2.log", RECEIVER_SECRET),
    ]
    assert scan_for_secrets({"clean.log": "nothing here\n"}, [RECEIVER_SECRET]) == []


def test_a_short_fault_run_loses_nothing_and_leaks_no_secret():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "tests.faults.driver", "--stores", "sqlite", "--jobs", "40", "--kills", "3",
         "--window", "12", "--drain", "300", "--seed", "7"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr
    summary = lines[-1]
    pattern = r"faults (\d+), jobs (\d+), lost 0, duplicated-other 0, failed-by-us 0, 5xx-unauthenticated 0, secrets-in-logs 0"
    match = re.fullmatch(pattern, summary)
    assert match, f"{summary}\n{done.stderr}"
    assert int(match[1]) >= 3
    assert int(match[2]) >= 30
    assert done.returncode == 0, done.stderr
    assert all(f"{name} 0" in summary for name in MUST_BE_ZERO)
