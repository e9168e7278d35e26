"""End-to-end fixtures: the real `receiver` command in subprocesses, emulators and a sink on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.background import BackgroundServer
from receiver.emulators.apiframe import ApiframeEmulator
from receiver.emulators.runbase import RunbaseEmulator
from tests.support.inbox import Inbox, running_inbox
from tests.support.waiting import wait_until

__all__ = ["ADMIN", "APIFRAME_KEY", "FORWARD_SECRET", "RUNBASE_KEY", "World", "free_port", "wait_until"]

APIFRAME_KEY = "afk_e2e_key"
RUNBASE_KEY = "rb_e2e_key"
ADMIN = "e2e-admin"
FORWARD_SECRET = "whsec_ZTJlLWZvcndhcmQtc2VjcmV0LWJ5dGVz"


@dataclass
class World:
    tmp: Path
    inbox: Inbox
    apiframe: ApiframeEmulator
    runbase: RunbaseEmulator
    env: dict[str, str]
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "receiver", *args], env=self.env, cwd=self.tmp, capture_output=True,
            text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if check and done.returncode != 0:
            pytest.fail(f"receiver {' '.join(args)} exited {done.returncode}: {done.stderr}")
        return done

    def serve(self, *extra: str) -> str:
        """Start `receiver serve` on a free port; returns its URL once /healthz answers."""
        port = int(self.env["RECEIVER_PUBLIC_URL"].rsplit(":", 1)[1])
        proc = subprocess.Popen(
            [sys.executable, "-m", "receiver", "serve", "--port", str(port), *extra], env=self.env, cwd=self.tmp,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.procs.append(proc)
        url = self.env["RECEIVER_PUBLIC_URL"]

        def up() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"receiver serve exited: {proc.stderr.read() if proc.stderr else ''}")
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up)
        return url

    def kill(self, proc: subprocess.Popen[str], sig: int = signal.SIGKILL) -> None:
        proc.send_signal(sig)
        proc.wait(timeout=20)

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.env["RECEIVER_PUBLIC_URL"], headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30
        )

    def show(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = json.loads(self.run("show", job_id, "--json").stdout)
        return job


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def world(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[World]:
    options = getattr(request, "param", {})
    apiframe = ApiframeEmulator(
        api_key=APIFRAME_KEY, **{"delay": 0.5, "seed": 2, **options.get("apiframe", {})}
    )
    runbase = RunbaseEmulator(api_key=RUNBASE_KEY, **{"delay": 0.5, "seed": 2, **options.get("runbase", {})})
    config = tmp_path / "receiver.toml"
    config.write_text(
        '[[handlers]]\nname = "forward"\ntype = "forward"\nurl = "${INBOX_URL}"\nsecret = "${FORWARD_SECRET}"\n'
        "retry_base = 0\n"
    )
    with (
        running_inbox() as inbox,
        BackgroundServer(apiframe.app) as apiframe_server,
        BackgroundServer(runbase.app) as runbase_server,
    ):
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(tmp_path),
            "RECEIVER_SECRET": "e2e-receiver-secret-value",
            "RECEIVER_PUBLIC_URL": f"http://127.0.0.1:{free_port()}",
            "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'receiver.db'}",
            "RECEIVER_CONFIG": str(config),
            "RECEIVER_ADMIN_TOKEN": ADMIN,
            "RECEIVER_EXPECTED_SECONDS": "0.5",
            "APIFRAME_API_KEY": APIFRAME_KEY,
            "APIFRAME_BASE_URL": apiframe_server.url,
            "RUNBASE_API_KEY": RUNBASE_KEY,
            "RUNBASE_BASE_URL": runbase_server.url,
            "INBOX_URL": inbox.url,
            "FORWARD_SECRET": FORWARD_SECRET,
            **options.get("env", {}),
        }
        world = World(tmp_path, inbox, apiframe, runbase, env)
        try:
            yield world
        finally:
            for proc in world.procs:
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                if proc.stderr:
                    proc.stderr.close()
