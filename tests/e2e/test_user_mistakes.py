"""Every ordinary mistake, made through the real `receiver` command: one line on stderr naming the
setting or argument, no traceback, exit 2. (A refusal by a provider is exit 1, tested with submits.)"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.pg import require_server

PG = "postgresql://root@127.0.0.1:5432"


def run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RECEIVER_", "APIFRAME_", "RUNBASE_"))}
    base |= {"RECEIVER_SECRET": "mistakes-secret", "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path}/r.db"}
    return subprocess.run(
        [sys.executable, "-m", "receiver", *args], env=base | env, cwd=tmp_path, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip


def one_line(done: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1, done.stderr
    assert done.returncode == code, done.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


COMMANDS = [("serve", "--port", "1"), ("worker",), ("jobs",), ("tick",), ("dead",)]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_sqlite_file_that_cannot_be_opened(tmp_path: Path, command: tuple[str, ...]) -> None:
    one_line(
        run(tmp_path, *command, RECEIVER_DATABASE_URL="sqlite:////proc/r.db"),
        2, "RECEIVER_DATABASE_URL", "/proc/r.db",
    )  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_sqlite_path_whose_parent_is_a_file(tmp_path: Path, command: tuple[str, ...]) -> None:
    (tmp_path / "afile").write_text("")
    url = f"sqlite:///{tmp_path}/afile/r.db"
    one_line(run(tmp_path, *command, RECEIVER_DATABASE_URL=url), 2, "RECEIVER_DATABASE_URL", "is a file")


@pytest.fixture
def postgres() -> None:
    require_server()


@pytest.mark.usefixtures("postgres")
@pytest.mark.parametrize("command", COMMANDS[:3], ids=lambda c: c[0])
@pytest.mark.parametrize(
    "url",
    [f"{PG}/no_such_database", "postgresql://root@127.0.0.1:1/test"],
    ids=["no-database", "closed-port"],
)
def test_a_postgresql_url_that_cannot_be_used(tmp_path: Path, command: tuple[str, ...], url: str) -> None:
    one_line(run(tmp_path, *command, RECEIVER_DATABASE_URL=url), 2, "RECEIVER_DATABASE_URL")


def test_an_api_key_holding_a_space(tmp_path: Path) -> None:
    done = run(
        tmp_path, "submit", "--provider", "runbase", "--prompt", "a lamp", RUNBASE_API_KEY="rb key-part"
    )
    line = one_line(done, 2, "RUNBASE_API_KEY")
    assert "key-part" not in line


def test_serve_on_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        one_line(run(tmp_path, "serve", "--port", port), 2, "--port", port, "in use")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("serve", "--port", "70000"), ("--port", "70000")),
        (("serve", "--port", "0"), ("--port",)),
        (("emulate", "runbase", "--port", "-1"), ("--port",)),
        (("jobs", "--limit", "-1"), ("--limit", "-1")),
        (("jobs", "--limit", "0"), ("--limit",)),
    ],
    ids=["port-too-big", "port-zero", "emulate-port", "limit-negative", "limit-zero"],
)
def test_arguments_out_of_range(tmp_path: Path, args: tuple[str, ...], words: tuple[str, ...]) -> None:
    done = run(tmp_path, *args)
    # argparse prints its usage above the one line that says what is wrong.
    assert "Traceback" not in done.stderr
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    for word in words:
        assert word in last, last


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"RECEIVER_PUBLIC_URL": "receiver.example.com"}, ("RECEIVER_PUBLIC_URL", "absolute")),
        ({"RECEIVER_REQUIRE_SIGNATURE": "ture"}, ("RECEIVER_REQUIRE_SIGNATURE",)),
        ({"RECEIVER_JOB_TIMEOUT": "soon"}, ("RECEIVER_JOB_TIMEOUT",)),
    ],
    ids=["public-url", "boolean", "number"],
)
def test_settings_that_are_wrong(tmp_path: Path, env: dict[str, str], words: tuple[str, ...]) -> None:
    for command in (("serve", "--port", "1"), ("jobs",)):
        one_line(run(tmp_path, *command, **env), 2, *words)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[settings]\nrequire_signatures = true\n", ("require_signatures", "require_signature'?")),
        ('[[handler]]\nname = "log"\ntype = "log"\n', ("'handler'", "'handlers'?")),
    ],
    ids=["settings-key", "table"],
)
def test_config_file_typos(tmp_path: Path, text: str, words: tuple[str, ...]) -> None:
    (tmp_path / "receiver.toml").write_text(text)
    one_line(run(tmp_path, "serve", "--port", "1"), 2, *words)
