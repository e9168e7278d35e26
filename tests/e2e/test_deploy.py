"""The deployment recipes checked here: the Procfile's web command serves, and the AWS Lambda template
is valid and names entry points that exist (the entry points themselves: test_serverless.py)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import httpx
from conftest import World, wait_until

ROOT = Path(__file__).resolve().parents[2]


def test_procfile_web_command_serves(world: World) -> None:
    command = (ROOT / "Procfile").read_text().split("web:", 1)[1].strip()
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
