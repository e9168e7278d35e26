"""A third-party handler found through its entry point, as if `pip install`ed.

Installing for real would change the shared virtualenv and take seconds; instead the test writes the
`*.dist-info` that an install would write (metadata plus `entry_points.txt`, taken from the fixture's
own pyproject.toml) into a temporary folder on sys.path: importlib.metadata reads exactly that.
"""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from handlers import ConfigError, build_handlers, load_handler_class
from receiver.events import Job, JobStatus, make_event

pytestmark = pytest.mark.anyio
PACKAGE = Path(__file__).resolve().parents[1] / "fixtures" / "entrypoint_pkg"
GROUP = "receiver.handlers"


def install(site: Path) -> str:
    """Write the package's dist-info into `site`; return the entry point's name."""
    project = tomllib.loads((PACKAGE / "pyproject.toml").read_text())["project"]
    points = project["entry-points"][GROUP]
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    lines = [f"[{GROUP}]", *(f"{name} = {target}" for name, target in points.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    (name,) = points
    return str(name)


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = install(tmp_path / "site-packages")
    monkeypatch.syspath_prepend(str(tmp_path / "site-packages"))
    monkeypatch.syspath_prepend(str(PACKAGE))  # the module itself, as an install would copy it
    yield name
    sys.modules.pop("receiver_echo_handler", None)


def test_an_unknown_name_points_at_entry_points() -> None:
    with pytest.raises(ConfigError, match=r"entry point in group receiver\.handlers"):
        load_handler_class("echo")


async def test_the_entry_point_is_found_and_built(installed: str) -> None:
    assert installed == "echo"
    cls = load_handler_class("echo")
    assert cls.__name__ == "EchoHandler"
    assert load_handler_class("receiver_echo_handler:EchoHandler") is cls

    (spec,) = build_handlers(
        [{"name": "mine", "type": "echo", "prefix": "seen", "events": ["job.succeeded"], "max_attempts": 2}]
    )
    assert isinstance(spec.handler, cls)
    assert (spec.events, spec.max_attempts) == (("job.succeeded",), 2)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    job = Job(
        id="job_ep", provider="apiframe", status=JobStatus.SUCCEEDED, request={"prompt": "p"}, created_at=now
    )
    assert await spec.handler.handle(make_event(job, "evt_ep", now=now)) == {"echo": "seen:evt_ep"}


def test_its_own_validation_is_reported_with_the_handler_name(installed: str) -> None:
    with pytest.raises(ConfigError, match=r"^handler 'mine': key 'prefix': must be a non-empty string$"):
        build_handlers([{"name": "mine", "type": "echo", "prefix": ""}])
    with pytest.raises(ConfigError, match=r"^handler 'mine': unknown key 'colour'$"):
        build_handlers([{"name": "mine", "type": "echo", "colour": "red"}])
