"""`receiver demo`, the README's first command: no key, no setting, under a minute, nothing left over."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_demo_completes_one_job_per_road_and_reports_every_sink(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "receiver", "demo", "--keep", str(tmp_path / "demo")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    out = done.stdout

    assert done.returncode == 0, done.stderr
    assert "apiframe │ webhook │ succeeded" in out
    assert "runbase  │ poll    │ succeeded" in out
    assert "forward: 2 of 2 events arrived with a valid Standard Webhooks signature" in out
    assert "database: 2 rows" in out
    assert len(list((tmp_path / "demo" / "videos").glob("job_*/0.mp4"))) == 2
    assert "Traceback" not in done.stderr
