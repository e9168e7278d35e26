"""Secrets never reach a log line: mask() on text, and the structlog chain on every field."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from receiver import logs

SECRET = "sk_live_0123456789abcdef"
TOKEN = "eyJqIjoiam9iXzEiLCJwIjoiYXBpZnJhbWUifQ.aZ1x2Q.p9Fh3k-Wq_2c"


@pytest.fixture(autouse=True)
def _fresh_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test registers its own secrets and configures structlog; neither leaks to other tests."""
    monkeypatch.setattr(logs, "_secrets", set())
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    root.handlers, root.level = handlers, level


def _lines(err: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in err.splitlines() if line.strip()]


def test_registered_secret_is_masked_wherever_it_appears() -> None:
    logs.register_secrets([SECRET])
    assert logs.mask(f"key={SECRET}; again {SECRET}.") == "key=***; again ***."


def test_none_empty_and_very_short_values_are_not_registered() -> None:
    logs.register_secrets([None, "", "abc"])
    assert logs.mask("abc is a common word") == "abc is a common word"


def test_longer_secret_is_masked_whole_when_another_is_its_prefix() -> None:
    logs.register_secrets(["abcd", "abcdefgh"])
    assert logs.mask("x abcdefgh y") == "x *** y"


def test_text_without_secrets_is_unchanged() -> None:
    logs.register_secrets([SECRET])
    assert logs.mask("job_1 succeeded in 150 s") == "job_1 succeeded in 150 s"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (f"/hooks/apiframe/{TOKEN}", "/hooks/apiframe/***"),
        (f"https://hooks.example.com/hooks/runbase/{TOKEN}", "https://hooks.example.com/hooks/runbase/***"),
        (f"POST /hooks/apiframe/{TOKEN}?retry=1 401", "POST /hooks/apiframe/***?retry=1 401"),
        (f'{{"url": "/hooks/apiframe/{TOKEN}"}}', '{"url": "/hooks/apiframe/***"}'),
        (f"/hooks/apiframe/{TOKEN}/extra", "/hooks/apiframe/***/extra"),
    ],
)
def test_hook_tokens_in_urls_are_masked_without_registering_them(text: str, masked: str) -> None:
    assert logs.mask(text) == masked


def test_scrub_reaches_nested_fields_and_exceptions() -> None:
    logs.register_secrets([SECRET])
    event = {
        "event": f"calling with {SECRET}",
        "headers": {"authorization": f"Bearer {SECRET}"},
        "urls": [f"/hooks/apiframe/{TOKEN}", "plain"],
        "pair": ("a", SECRET),
        "error": RuntimeError(f"refused key {SECRET}"),
        "count": 3,
    }
    scrubbed = logs.scrub_secrets(None, "info", event)
    assert scrubbed == {
        "event": "calling with ***",
        "headers": {"authorization": "Bearer ***"},
        "urls": ["/hooks/apiframe/***", "plain"],
        "pair": ["a", "***"],
        "error": "RuntimeError: refused key ***",
        "count": 3,
    }


def test_json_log_line_shows_the_mask_not_the_secret(capsys: pytest.CaptureFixture[str]) -> None:
    logs.register_secrets([SECRET])
    logs.configure("info", json=True)
    structlog.get_logger().info(
        "provider.call", job_id="job_1", api_key=SECRET, url=f"https://h.example.com/hooks/apiframe/{TOKEN}"
    )
    err = capsys.readouterr().err
    assert SECRET not in err
    assert TOKEN not in err
    (line,) = _lines(err)
    assert line["event"] == "provider.call"
    assert line["job_id"] == "job_1"
    assert line["api_key"] == "***"
    assert line["url"] == "https://h.example.com/hooks/apiframe/***"
    assert line["level"] == "info"
    assert "timestamp" in line


def test_secret_in_a_logged_traceback_is_masked(capsys: pytest.CaptureFixture[str]) -> None:
    logs.register_secrets([SECRET])
    logs.configure("info", json=True)
    try:
        raise ValueError(f"bad key {SECRET}")
    except ValueError:
        structlog.get_logger().exception("handler.failed", handler="slack")
    err = capsys.readouterr().err
    assert SECRET not in err
    (line,) = _lines(err)
    assert "ValueError: bad key ***" in str(line["exception"])


def test_bound_context_is_scrubbed_too(capsys: pytest.CaptureFixture[str]) -> None:
    logs.register_secrets([SECRET])
    logs.configure("info", json=True)
    structlog.get_logger().bind(token=SECRET).warning("hook.refused")
    err = capsys.readouterr().err
    assert SECRET not in err
    assert _lines(err)[0]["token"] == "***"


def test_level_filters_lower_lines(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("warning", json=True)
    log = structlog.get_logger()
    log.info("quiet")
    log.warning("loud")
    assert [line["event"] for line in _lines(capsys.readouterr().err)] == ["loud"]


def test_console_renderer_masks_as_well(capsys: pytest.CaptureFixture[str]) -> None:
    logs.register_secrets([SECRET])
    logs.configure("info", json=False)
    structlog.get_logger().info("provider.call", api_key=SECRET)
    err = capsys.readouterr().err
    assert SECRET not in err
    assert "***" in err


def test_a_log_line_goes_above_a_progress_bar_not_into_it(capsys: pytest.CaptureFixture[str]) -> None:
    """While `submit --wait` shows its bar, rich puts a proxy on sys.stderr that prints above the bar;
    the logger must write through whatever sys.stderr is then, not the stream it saw at start-up."""
    import io

    from rich.console import Console
    from rich.progress import Progress

    logs.configure("info", json=True)
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100)
    with Progress(console=console, transient=True) as progress:
        progress.add_task("job_1 running", total=100)
        structlog.get_logger().info("poll_done", job_id="job_1")
    assert capsys.readouterr().err == ""  # nothing went around rich to the real stderr
    assert '"event": "poll_done"' in screen.getvalue()


def _fresh_root() -> None:
    """The root logger as a fresh process has it: pytest's capture handlers (added for the test's
    body, removed after it) are not a host's."""
    logging.getLogger().handlers.clear()


def test_standard_library_records_are_json_lines_masked_too(capsys: pytest.CaptureFixture[str]) -> None:
    # uvicorn's and psycopg's pool's loggers are the standard library's: the same format and masking.
    _fresh_root()
    logs.register_secrets([SECRET])
    logs.configure("info", json=True)
    logging.getLogger("psycopg.pool").warning(
        "error connecting with key %s to /hooks/apiframe/%s", SECRET, TOKEN
    )
    logging.getLogger("uvicorn.error").debug("below the level")
    err = capsys.readouterr().err
    assert SECRET not in err
    assert TOKEN not in err
    (line,) = _lines(err)
    assert line["event"] == "error connecting with key *** to /hooks/apiframe/***"
    assert line["logger"] == "psycopg.pool"
    assert line["level"] == "warning"
    assert "timestamp" in line


def test_configured_twice_a_standard_library_record_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    _fresh_root()
    logs.configure("info", json=True)
    logs.configure("info", json=True)
    logging.getLogger("any.library").error("once")
    assert [line["event"] for line in _lines(capsys.readouterr().err)] == ["once"]


def test_a_host_that_owns_the_standard_librarys_logging_keeps_it(capsys: pytest.CaptureFixture[str]) -> None:
    # Lambda's runtime installs its own root handler before our code runs: no second line per record.
    _fresh_root()
    hosts = logging.StreamHandler()
    logging.getLogger().addHandler(hosts)
    logs.configure("info", json=True)
    assert logging.getLogger().handlers == [hosts]
