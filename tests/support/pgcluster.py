"""A private PostgreSQL cluster for tests that restart the server: `initdb` in a temporary folder on its
own port, never the machine's shared server."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def _binary(name: str) -> str | None:
    for folder in BIN_DIRS:
        if (folder / name).exists():
            return str(folder / name)
    return shutil.which(name)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Cluster:
    """One cluster: `url`, `restart()`, `stop()`, `start()`. Runs as `postgres` when we are root."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        self.port = port
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def _ctl(self, *args: str) -> None:
        ctl = _binary("pg_ctl")
        assert ctl is not None
        command = [ctl, "-D", str(self.folder / "data"), "-w", "-t", "60", *args]
        subprocess.run(_as_owner(command), check=True, capture_output=True)

    def start(self) -> None:
        log = str(self.folder / "server.log")
        self._ctl("-l", log, "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1", "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "stop")

    def restart(self) -> None:
        """Stop (closing every connection) and start again on the same port."""
        self.stop()
        self.start()


def _as_owner(command: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


@contextmanager
def private_cluster() -> Iterator[Cluster]:
    """A new cluster, started; stopped and removed afterwards. Skips (fails under CI) without initdb."""
    initdb = _binary("initdb")
    if initdb is None:
        if os.environ.get("CI"):
            pytest.fail("initdb is not installed: a private PostgreSQL cluster cannot be made")
        pytest.skip("initdb is not installed and CI is unset")
    folder = Path(tempfile.mkdtemp(prefix="receiver-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    cluster = Cluster(folder, _free_port())
    subprocess.run(
        _as_owner([initdb, "-D", str(folder / "data"), "-U", "postgres", "-A", "trust", "--no-sync"]),
        check=True,
        capture_output=True,
    )
    cluster.start()
    try:
        yield cluster
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped by the test
            cluster.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)
