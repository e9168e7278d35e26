"""`slack`: an incoming-webhook message in Block Kit, with a plain-text fallback."""

from __future__ import annotations

from typing import Any

import httpx

from handlers import ConfigError
from handlers._http import check_http_url, check_status, check_transport, http_client, transport_failure
from receiver.clock import Clock, system_clock
from receiver.events import parse_iso

HTTP_TIMEOUT = 30.0
# Slack's documented limits for the blocks used here.
MAX_BLOCKS = 50
MAX_HEADER = 150
MAX_SECTION = 3000
MAX_FIELDS = 10
MAX_FIELD = 2000
MAX_CONTEXT_ELEMENTS = 10
MAX_BUTTON_TEXT = 75
MAX_BUTTON_URL = 3000
MAX_BUTTONS = 5
MAX_FALLBACK = 300


def cut(text: str, limit: int) -> str:
    """`text` shortened to at most `limit` characters, ending in an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def escape(text: str) -> str:
    """Slack mrkdwn needs only these three escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def mrkdwn_cut(text: str, limit: int) -> str:
    """Escape then cut, without splitting an `&amp;`-style entity."""
    escaped = escape(text)
    if len(escaped) <= limit:
        return escaped
    shortened = escaped[: limit - 1]
    amp = shortened.rfind("&")
    if amp != -1 and ";" not in shortened[amp:]:
        shortened = shortened[:amp]
    return shortened.rstrip() + "…"


def duration_text(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def time_taken(job: dict[str, Any]) -> str | None:
    try:
        start, end = parse_iso(job.get("created_at")), parse_iso(job.get("completed_at"))
    except (TypeError, ValueError):
        return None
    if start is None or end is None or end < start:
        return None
    return duration_text((end - start).total_seconds())


def stored_urls(event: dict[str, Any]) -> list[str]:
    """Every `stored_urls` entry reported by handlers that ran before this one."""
    urls: list[str] = []
    for report in (event.get("reports") or {}).values():
        if isinstance(report, dict):
            urls.extend(u for u in report.get("stored_urls") or [] if isinstance(u, str))
    return urls


def _is_web(url: str) -> bool:
    return url.startswith(("https://", "http://"))


def video_links(event: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(links to open, stored locations to name): a stored copy a browser can open beats the
    provider's URL (purged after about a day); s3:// or file:// copies are named, not linked."""
    stored = stored_urls(event)
    web_stored = [u for u in stored if _is_web(u)]
    if web_stored:
        return web_stored, []
    provider = [u for u in event["job"].get("output_urls") or [] if isinstance(u, str) and _is_web(u)]
    return provider, stored


def _field(label: str, value: str) -> dict[str, str]:
    head = f"*{label}*\n"
    return {"type": "mrkdwn", "text": head + mrkdwn_cut(value, MAX_FIELD - len(head))}


def _request_fields(job: dict[str, Any]) -> list[dict[str, str]]:
    request = job.get("request") or {}
    fields = [_field("Provider", str(job.get("provider") or "unknown"))]
    cost: dict[str, Any] = job["cost"] if isinstance(job.get("cost"), dict) else {}
    amount = cost.get("amount")
    if isinstance(amount, int | float) and not isinstance(amount, bool):
        estimate = " (estimate)" if cost.get("source") == "estimate" else ""
        fields.append(_field("Cost", cost_text(amount, cost.get("unit")) + estimate))
    if request.get("mode"):
        fields.append(_field("Mode", str(request["mode"])))
    if request.get("duration"):
        fields.append(_field("Duration", f"{request['duration']} s"))
    if request.get("aspect_ratio"):
        fields.append(_field("Aspect ratio", str(request["aspect_ratio"])))
    taken = time_taken(job)
    if taken:
        fields.append(_field("Time taken", taken))
    if request.get("generate_audio"):
        fields.append(_field("Audio", "yes"))
    if request.get("start_image") or request.get("end_image"):
        fields.append(_field("Input", "image to video"))
    return fields[:MAX_FIELDS]


def cost_text(cost: float, unit: Any) -> str:
    """`$0.50` for dollars, `10 credits` for credits: the provider's own figure, net of refunds."""
    if unit == "usd":
        return f"${cost:,.2f}"
    return f"{cost:g} {unit or ''}".strip()


def budget_message(event: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The fallback text and blocks of a `budget` event: a provider's daily budget reached a level."""
    budget = event.get("budget") or {}
    provider = str(budget.get("provider") or "unknown")
    level = budget.get("level")
    spent, limit, unit = budget.get("spent"), budget.get("limit"), budget.get("unit")
    amounts = "unknown"
    if isinstance(spent, int | float) and isinstance(limit, int | float):
        amounts = f"{cost_text(spent, unit)} of {cost_text(limit, unit)}"
    text = f"{provider} daily budget at {level}%: {amounts} spent on {budget.get('day')}"
    title = f":warning: Budget {level}% · {provider}"
    blocks = [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": cut(title, MAX_HEADER),
            },
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": cut(escape(text), MAX_SECTION)}},
    ]
    return escape(cut(text, MAX_FALLBACK)), blocks


def build_message(
    event: dict[str, Any],
    *,
    channel: str | None = None,
    username: str | None = None,
    icon_emoji: str | None = None,
) -> dict[str, Any]:
    """The incoming-webhook payload for one event, inside Slack's limits whatever the input."""
    overrides = {"channel": channel, "username": username, "icon_emoji": icon_emoji}
    chosen = {key: value for key, value in overrides.items() if value}
    if event.get("type") == "budget":
        text, budget_blocks = budget_message(event)
        return {"text": text, "blocks": budget_blocks, **chosen}
    job = event["job"]
    request = job.get("request") or {}
    succeeded = event.get("type") == "job.succeeded"
    prompt = str(request.get("prompt") or "").strip()
    model = str(job.get("model") or "video")
    error = job.get("error") if isinstance(job.get("error"), dict) else None

    if succeeded:
        title = f":white_check_mark: Video ready · {model}"
    elif job.get("status") == "canceled":
        title = f":no_entry_sign: Video canceled · {model}"
    else:
        title = f":x: Video failed · {model}"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": cut(title, MAX_HEADER), "emoji": True}}
    ]
    if prompt:
        label = "*Prompt*\n"
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": label + mrkdwn_cut(prompt, MAX_SECTION - len(label))},
            }
        )
    blocks.append({"type": "section", "fields": _request_fields(job)})

    links, named = video_links(event) if succeeded else ([], [])
    if links:
        buttons = [
            {
                "type": "button",
                "text": {
                    "type": "plain_text",
                    "text": cut("Open video" if len(links) == 1 else f"Open video {n + 1}", MAX_BUTTON_TEXT),
                },
                "url": url,
                **({"style": "primary"} if n == 0 else {}),
            }
            for n, url in enumerate(links[:MAX_BUTTONS])
            if len(url) <= MAX_BUTTON_URL
        ]
        if buttons:
            blocks.append({"type": "actions", "elements": buttons})
    if named:
        text = "*Stored*\n" + "\n".join(f"`{escape(u)}`" for u in named)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": cut(text, MAX_SECTION)}})
    if error and not succeeded:
        code = str(error.get("code") or "error")
        message = str(error.get("message") or "").strip() or "no message"
        head = f"*Error* `{escape(code)}`\n"
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": cut(head, 200) + mrkdwn_cut(message, MAX_SECTION - 200)},
            }
        )
    context = [f"job `{escape(str(job.get('id')))}`"]
    if job.get("provider_job_id"):
        context.append(f"{escape(str(job.get('provider')))} id `{escape(str(job['provider_job_id']))}`")
    if job.get("completed_via"):
        context.append(f"via {escape(str(job['completed_via']))}")
    blocks.append(
        {
            "type": "context",
            "elements": [
                {"type": "mrkdwn", "text": cut(t, MAX_SECTION)} for t in context[:MAX_CONTEXT_ELEMENTS]
            ],
        }
    )

    return {"text": fallback_text(event, succeeded, prompt, links), "blocks": blocks[:MAX_BLOCKS], **chosen}


def fallback_text(event: dict[str, Any], succeeded: bool, prompt: str, links: list[str]) -> str:
    """What notifications and screen readers show: outcome, prompt, provider, link or error."""
    job = event["job"]
    short = cut(" ".join(prompt.split()), 80)
    where = str(job.get("provider") or "")
    if succeeded:
        text = f"Video ready ({where}): {short}"
        if links and len(text) + len(links[0]) + 3 <= MAX_FALLBACK:
            text += f" - {links[0]}"
    else:
        error = job.get("error") if isinstance(job.get("error"), dict) else {}
        code = (error or {}).get("code") or job.get("status") or "failed"
        text = f"Video failed ({where}, {code}): {short}"
    return escape(cut(text, MAX_FALLBACK))


class SlackHandler:
    """Keys: `webhook_url`; optional `channel`, `username`, `icon_emoji` (honoured by legacy webhooks).

    429 waits for Retry-After; 5xx and network errors are retried; other 4xx (revoked hook,
    invalid payload, archived channel) are permanent, with Slack's answer as the reason.
    """

    def __init__(
        self,
        webhook_url: str,
        channel: str | None = None,
        username: str | None = None,
        icon_emoji: str | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock = system_clock,
    ) -> None:
        self._url = check_http_url(webhook_url, "webhook_url")
        self.clock = clock
        for key, value in (("channel", channel), ("username", username), ("icon_emoji", icon_emoji)):
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"key {key!r}: must be a string")
        self.channel, self.username, self.icon_emoji = channel, username, icon_emoji
        self._client = http_client(HTTP_TIMEOUT, check_transport(transport))

    async def handle(self, event: dict[str, Any]) -> dict[str, Any] | None:
        payload = build_message(
            event, channel=self.channel, username=self.username, icon_emoji=self.icon_emoji
        )
        client = await self._client.get()
        try:
            response = await client.post(self._url, json=payload)
        except httpx.TransportError as exc:
            raise transport_failure(exc, "slack") from None
        check_status(response.status_code, response.headers, response.text, "slack", now=self.clock())
        return None

    async def aclose(self) -> None:
        await self._client.aclose()
