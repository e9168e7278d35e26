"""GET /metrics over real HTTP: parses with prometheus_client, takes no label from a URL, and moves with
real webhooks, polls, provider requests and deliveries."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.stack import apiframe_body, apiframe_signature, receiver_stack

# A provider segment that, pasted into a label value, would close it and start a sample of its own.
INJECTIONS = ("x%0Areceiver_x%201", "x%22%2Ccode%3D%22200%22%7D%201%0Areceiver_x%201%0A%23")


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_parse_have_help_take_no_label_from_the_url_and_move(tmp_path: Path, sink, wait) -> None:
    with receiver_stack(
        tmp_path, sink.url, run_worker=False, apiframe={"webhook": "drop", "delay": 600}
    ) as stack:
        stack.apiframe.inject(429, retry_after=0)
        by_webhook = stack.submit("apiframe")
        by_poll = stack.submit("runbase")
        body = apiframe_body(by_webhook["provider_job_id"])
        hooked = httpx.post(
            stack.hook_url(by_webhook["id"]),
            content=body,
            headers={"X-Webhook-Signature": apiframe_signature(body)},
        )
        crafted = [httpx.post(f"{stack.url}/hooks/{segment}/token", content=b"{}") for segment in INJECTIONS]

        def settled() -> bool:
            stack.admin.post("/tick")
            return bool(stack.settled(by_webhook["id"]) and stack.settled(by_poll["id"]))

        wait(settled, clock=stack.clock, step=0.5)  # the Runbase job needs time to pass
        answer = httpx.get(f"{stack.url}/metrics")

    assert hooked.status_code == 200, hooked.text
    assert [c.status_code for c in crafted] == [401, 401]
    text = answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    families = list(text_string_to_metric_families(text))
    assert not any(line.startswith("receiver_x") for line in text.splitlines())
    assert "receiver_x" not in {f.name for f in families}
    assert all(f.documentation for f in families)
    assert text.count("# HELP ") == len(families) >= 8

    samples = _samples(text)
    assert not any(name.startswith("receiver_x") for name, _ in samples)
    providers = {dict(labels).get("provider") for _, labels in samples} - {None}
    assert providers <= {"apiframe", "runbase", "unknown"}
    assert _value(samples, "receiver_webhooks_total", provider="unknown", code="401") == 2
    assert _value(samples, "receiver_webhooks_total", provider="apiframe", code="200") == 1
    assert _value(samples, "receiver_polls_total", provider="runbase", outcome="ok") >= 1
    assert _value(samples, "receiver_provider_requests_total", provider="apiframe", code="429") == 1
    answered = {
        (labels["provider"], labels["code"][0])
        for (name, frozen), n in samples.items()
        if name == "receiver_provider_requests_total" and n and (labels := dict(frozen))
    }
    assert {("apiframe", "2"), ("runbase", "2")} <= answered
    assert _value(samples, "receiver_provider_rate_limited_total", provider="apiframe") == 1
    assert _value(samples, "receiver_delivery_attempts_total", handler="forward", outcome="delivered") == 2
    assert _value(samples, "receiver_webhook_to_handler_seconds_count", provider="apiframe") == 1
    assert _value(samples, "receiver_webhook_to_handler_seconds_count", provider="runbase") == 0
    assert _value(samples, "receiver_jobs", provider="apiframe", status="succeeded") == 1
    assert _value(samples, "receiver_jobs", provider="runbase", status="succeeded") == 1
    assert _value(samples, "receiver_deliveries", status="delivered") == 2
    # Each finished job is the first sample of its kind's completion-time model: still the prior.
    runbase = {
        "provider": "runbase",
        "model": "kling-3.0",
        "mode": "pro",
        "duration": "default",
        "audio": "false",
    }
    assert _value(samples, "receiver_completion_samples", **runbase) == 1
    medians = [
        n
        for (name, frozen), n in samples.items()
        if name == "receiver_completion_seconds"
        and (labels := dict(frozen)).pop("quantile") in ("0.5", "0.50")
        and labels == runbase
    ]
    assert medians == [pytest.approx(0.3)]  # RECEIVER_EXPECTED_SECONDS of the stack
    by_webhook_kinds = [
        n
        for (name, frozen), n in samples.items()
        if name == "receiver_completion_samples" and dict(frozen)["provider"] == "apiframe"
    ]
    assert by_webhook_kinds == [1]
