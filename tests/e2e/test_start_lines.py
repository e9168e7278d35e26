"""What `serve` and `worker` say when they start, `--version`, and `submit --wait` telling at once that
Apiframe's webhooks cannot reach RECEIVER_PUBLIC_URL."""

from __future__ import annotations

import importlib.metadata
import json
import signal
import socket
import subprocess
import sys

from receiver.cli import shown_url
from tests.e2e.conftest import World, free_port


def first_line(world: World, *args: str, **env: str) -> str:
    proc = subprocess.Popen(
        [sys.executable, "-m", "receiver", *args], env=world.env | env, cwd=world.tmp,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    world.procs.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    proc.stdout.close()
    return line


def test_serve_says_where_what_store_providers_handlers_and_worker(world: World) -> None:
    port = free_port()
    line = first_line(world, "serve", "--port", str(port))
    assert f"serving on http://127.0.0.1:{port}" in line
    assert f"store sqlite:///{world.tmp / 'receiver.db'}" in line
    assert "providers apiframe, runbase" in line
    assert "handlers forward (forward)" in line
    assert "worker in this process" in line


def test_a_database_url_is_shown_without_credentials() -> None:
    url = "postgresql://reader:hunter2pass@127.0.0.1:5433/receiver?password=hunter2pass"
    assert shown_url(url) == "postgresql://127.0.0.1:5433/receiver"


def test_serve_without_worker_and_worker_say_so(world: World) -> None:
    line = first_line(world, "serve", "--no-worker", "--port", str(free_port()))
    assert "no worker (run `receiver worker`)" in line
    line = first_line(world, "worker", RUNBASE_API_KEY="")
    assert line.startswith("receiver ")
    assert " worker · " in line
    assert "providers apiframe ·" in line


def test_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "receiver", "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert done.stdout.strip() == f"receiver {importlib.metadata.version('kling-receiver')}"


def test_submit_wait_says_at_once_when_the_public_url_does_not_answer(world: World) -> None:
    # Nothing serves RECEIVER_PUBLIC_URL: Apiframe's webhook for this job can never arrive.
    proc = subprocess.Popen(
        [sys.executable, "-m", "receiver", "submit", "--provider", "apiframe", "--prompt", "a lamp", "--wait"],
        env=world.env, cwd=world.tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    world.procs.append(proc)
    assert proc.stderr is not None
    # Log lines (JSON, the submit's) come first; the warning follows the submit, before any waiting.
    lines = [proc.stderr.readline() for _ in range(5)]
    line = next((line for line in lines if "RECEIVER_PUBLIC_URL" in line), "\n".join(lines))
    assert "does not answer /healthz" in line
    assert "apiframe's webhooks cannot reach this receiver" in line


def test_serve_writes_uvicorns_own_warnings_as_json_lines_like_its_own(world: World) -> None:
    url = world.serve()
    proc = world.procs[-1]
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(b"NOT HTTP AT ALL\r\n\r\n")  # uvicorn answers 400 and logs a warning of its own
        assert conn.recv(1024).startswith(b"HTTP/1.1 400")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]  # each line one JSON object
    warning = next(line for line in lines if line.get("logger") == "uvicorn.error")
    assert warning["level"] == "warning"
    assert "Invalid HTTP request" in warning["event"]
