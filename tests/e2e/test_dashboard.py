"""The dashboard in Debian's Chromium (Playwright) against `receiver serve` and both emulators."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.clock import VirtualClock
from tests.e2e.conftest import ADMIN, World
from tests.support.waiting import wait_until

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
APIFRAME_CLOCK = VirtualClock()  # Apiframe's webhooks wait for the test to move this clock

pytestmark = pytest.mark.parametrize(
    "world",
    [{"apiframe": {"clock": APIFRAME_CLOCK, "progress_webhooks": False}}],
    indirect=True,
)


@pytest.fixture
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs it (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    with playwright_api.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield launched
        finally:
            launched.close()


def sign_in(page: Any, url: str, token: str) -> None:
    page.goto(f"{url}/ui/login")
    page.get_by_label("Admin token").fill(token)
    page.get_by_role("button", name="Sign in").click()


def screenshots(tmp_path: Path) -> Path:
    """Where the screenshots go: tmp_path, or the folder RECEIVER_SCREENSHOTS names (relative to the
    repository), e.g. `RECEIVER_SCREENSHOTS=docs/screenshots` to refresh the README's."""
    folder = os.environ.get("RECEIVER_SCREENSHOTS")
    return ROOT / folder if folder else tmp_path


def test_dashboard_in_a_browser(world: World, browser: Any, tmp_path: Path) -> None:
    shots = screenshots(tmp_path)
    url = world.serve()
    page = browser.new_page(viewport={"width": 1280, "height": 900})

    # A wrong token is refused; the right one opens the jobs page.
    page.goto(f"{url}/ui/jobs")
    expect(page).to_have_url(f"{url}/ui/login")
    sign_in(page, url, "not-the-token")
    expect(page.locator("#login-error")).to_have_text("Wrong admin token.")
    sign_in(page, url, ADMIN)
    expect(page).to_have_url(f"{url}/ui/jobs")

    # A form post without its CSRF token changes nothing, though the session cookie goes with it.
    refused = page.request.post(f"{url}/ui/dead/replay", form={"job_id": "job_x", "handler": "forward"})
    assert refused.status == 403
    assert "CSRF" in refused.text()

    # Submit through the form (the inbox refuses the first delivery for good: 410); the job page
    # follows it to succeeded without a reload.
    world.inbox.answers.append(410)
    page.goto(f"{url}/ui/submit")
    page.get_by_label("Provider").select_option("runbase")
    page.get_by_label("Prompt", exact=True).fill("a lighthouse in a storm, seen from the sea")
    page.get_by_label("Duration in seconds (3 to 15, optional)").fill("5")
    page.get_by_role("button", name="Submit").click()
    expect(page).to_have_url(re.compile(r"/ui/jobs/job_\w+$"))
    job_id = page.url.rsplit("/", 1)[1]
    page.evaluate("window.notReloaded = true")
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=20_000)
    expect(page.locator("#delivery-forward")).to_have_attribute("data-status", "dead", timeout=20_000)
    assert page.evaluate("window.notReloaded") is True

    # The job page: its timeline and its video.
    timeline = page.locator("#timeline")
    for step in ("created", "submit to runbase: accepted", "submitted to runbase", "polled", "(by poll)"):
        expect(timeline).to_contain_text(step)
    expect(page.locator("#delivery-forward")).to_contain_text("410")
    video = page.locator("video")
    expect(video).to_have_count(1)
    assert (video.get_attribute("src") or "").startswith(world.env["RUNBASE_BASE_URL"])
    page.screenshot(path=shots / "job.png", full_page=True)

    # The dead letter, replayed once the inbox answers 200 again (its queue of refusals is used up).
    assert world.inbox.answers == []
    page.goto(f"{url}/ui/dead")
    row = page.locator(f"#dead-{job_id}-forward")
    expect(row).to_contain_text("410")
    row.get_by_role("button", name="Replay").click()
    expect(page.locator(".notice")).to_have_text("1 replayed")
    page.goto(f"{url}/ui/jobs/{job_id}")
    expect(page.locator("#delivery-forward")).to_have_attribute("data-status", "delivered", timeout=20_000)
    attempts = page.locator("#delivery-forward .attempt")
    expect(attempts).to_have_count(2)
    expect(attempts.nth(0)).to_contain_text("dead")
    expect(attempts.nth(0)).to_contain_text("410")
    expect(attempts.nth(1)).to_contain_text("delivered")
    assert len(world.inbox.wait_for(2)) == 2
    page.goto(f"{url}/ui/dead")
    expect(page.locator("#no-dead")).to_be_visible()

    # With the jobs page open, an Apiframe webhook shows up within 1 s of being sent.
    page.goto(f"{url}/ui/jobs")
    with world.admin() as admin:
        answer = admin.post("/jobs", json={"provider": "apiframe", "prompt": "a fox running through snow"})
    assert answer.status_code == 202, answer.text
    hooked = answer.json()["id"]
    row = page.locator(f"#job-{hooked}")
    expect(row).to_be_visible(timeout=10_000)
    expect(row).not_to_have_attribute("data-status", "succeeded")
    APIFRAME_CLOCK.wait_for_sleepers(1)  # the emulator's job waits to finish, its webhook unsent
    sent = time.monotonic()
    APIFRAME_CLOCK.advance(world.apiframe.delay)  # the job finishes now: the emulator sends its webhook
    remaining_ms = 1000 - (time.monotonic() - sent) * 1000
    expect(row).to_have_attribute("data-status", "succeeded", timeout=remaining_ms)
    expect(row.locator(".road")).to_have_text("webhook")
    assert any(hook["job_id"] for hook in world.apiframe.webhooks_sent if hook.get("status_code") == 200)
    wait_until(lambda: len(world.inbox.posts) == 3)  # its delivery settles before the screenshot
    page.reload()
    page.screenshot(path=shots / "jobs.png", full_page=True)

    # The same page at a phone's width still shows every job and its status.
    phone = browser.new_page(viewport={"width": 390, "height": 844})
    phone.context.add_cookies(page.context.cookies())
    phone.goto(f"{url}/ui/jobs")
    expect(phone.locator(f"#job-{job_id} .status")).to_have_text("succeeded")
    phone.screenshot(path=shots / "jobs-390.png", full_page=True)


def test_ui_without_admin_token_says_how_to_turn_it_on(world: World) -> None:
    del world.env["RECEIVER_ADMIN_TOKEN"]
    url = world.serve()
    answer = httpx.get(f"{url}/ui/jobs", timeout=10)
    assert answer.status_code == 403
    assert "RECEIVER_ADMIN_TOKEN" in answer.text
