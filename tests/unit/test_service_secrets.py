"""Handler secrets from the config are masked in logs as soon as the receiver is built."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from receiver import logs
from receiver.config import Settings
from receiver.service import Receiver


def test_handler_secrets_and_url_credentials_are_masked(tmp_path: Path) -> None:
    slack = "https://hooks.slack.com/services/T000/B000/sekritsekrit"
    settings = replace(
        Settings(),
        secret="receiver-secret-value",
        database_url=f"sqlite:///{tmp_path / 'r.db'}",
        handlers=[
            {"name": "chat", "type": "slack", "webhook_url": slack},
            {"name": "fwd", "type": "forward", "url": "https://user:pa55word@example.com/in?token=abc123xyz",
             "secret": "whsec_c2VjcmV0LWJ5dGVzLWhlcmU="},
        ],
    )  # fmt: skip
    Receiver.from_settings(settings)

    line = logs.mask(
        f"failed {slack} https://user:pa55word@example.com/in?token=abc123xyz receiver-secret-value"
    )
    assert "sekritsekrit" not in line
    assert "pa55word" not in line
    assert "abc123xyz" not in line
    assert "receiver-secret-value" not in line
    assert "whsec_c2VjcmV0LWJ5dGVzLWhlcmU=" not in logs.mask("secret whsec_c2VjcmV0LWJ5dGVzLWhlcmU=")
