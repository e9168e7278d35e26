"""examples/receiver.toml, read by the real config loader and built by the real handler registry, so
the example a user copies stays valid as settings and handler keys change."""

from __future__ import annotations

from pathlib import Path

import pytest

from handlers import BUILTIN, build_handlers
from receiver.config import load_settings

EXAMPLE = Path(__file__).parents[2] / "examples" / "receiver.toml"
ENV = {
    "RECEIVER_CONFIG": str(EXAMPLE),
    "S3_ENDPOINT_URL": "https://minio.example.com",
    "EVENTS_DATABASE_URL": "sqlite:///events.db",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/xyz",
    "FORWARD_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
}


@pytest.mark.anyio
async def test_the_example_config_loads_and_builds_every_builtin_handler() -> None:
    settings = load_settings(ENV)
    specs = build_handlers(settings.handlers)
    try:
        assert {spec.type for spec in specs} == set(BUILTIN)
        assert settings.public_url == "https://receiver.example.com"
        assert settings.require_signature is True
        slack = next(spec for spec in specs if spec.type == "slack")
        assert (slack.after, slack.max_attempts) == (("videos",), 5)
    finally:
        for spec in specs:
            await spec.handler.aclose()  # type: ignore[attr-defined]
