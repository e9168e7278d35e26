"""What the read commands print for a person, through the real `receiver` command: `jobs` fits 80
columns, `show` leaves out what is not known yet, `dead` says when there is nothing, and the README's
own-handler example works as written from the folder it sits in."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import World

README = Path(__file__).parents[2] / "README.md"


def test_jobs_fits_80_columns_with_each_job_on_one_line(world: World) -> None:
    finished = json.loads(
        world.run("submit", "--provider", "runbase", "--prompt", "lamp", "--wait", "--json").stdout
    )
    waiting = world.run("submit", "--provider", "apiframe", "--prompt", "fox").stdout.strip()
    world.env["COLUMNS"] = "80"

    lines = world.run("jobs").stdout.splitlines()

    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    row = next(line for line in lines if finished["id"] in line)
    assert re.fullmatch(
        rf"{finished['id']} +runbase +succeeded +\d\d-\d\d \d\d:\d\d +poll +1/1", row.rstrip()
    ), row
    assert "submitted" in next(line for line in lines if waiting in line)
    assert len(lines) == 2 + 2  # header, rule, one line per job


def test_show_leaves_out_what_is_not_known_yet(world: World) -> None:
    job_id = world.run("submit", "--provider", "apiframe", "--prompt", "fox").stdout.strip()

    shown = world.run("show", job_id).stdout

    assert world.show(job_id)["progress"] is None
    assert "None" not in shown, shown
    assert "progress" not in shown
    assert "completed_at" not in shown
    assert "submitted" in shown


def test_dead_says_so_when_there_are_none(world: World) -> None:
    done = world.run("dead")

    assert done.stdout == "no dead deliveries\n"
    assert json.loads(world.run("dead", "--json").stdout) == {"dead": [], "dead_budget_events": []}


def test_the_readme_handler_example_works_as_written(world: World, tmp_path: Path) -> None:
    """The module is the README's code block verbatim, beside a receiver.toml in the folder the
    installed `receiver` script runs from, with no PYTHONPATH."""
    section = README.read_text(encoding="utf-8").split("### Your own handler", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert code.startswith("# myhooks.py\n")
    here = tmp_path / "project"
    here.mkdir()
    (here / "myhooks.py").write_text(code)
    (here / "receiver.toml").write_text(
        '[[handlers]]\nname = "discord"\ntype = "myhooks:Discord"\nwebhook_url = "https://discord.example/hook"\n'
    )
    env = {k: v for k, v in world.env.items() if k not in ("RECEIVER_CONFIG", "PYTHONPATH")}
    script = Path(sys.executable).with_name("receiver")

    done = subprocess.run(
        [str(script), "submit", "--provider", "runbase", "--prompt", "lamp", "--wait", "--json"],
        env=env, cwd=here, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["status"] == "succeeded"
    assert [(d["handler"], d["status"]) for d in job["deliveries"]] == [("discord", "delivered")]
