"""`log`: one structured log line per event; the default when no handler is configured."""

from __future__ import annotations

from typing import Any

import structlog

logger = structlog.get_logger("handlers.log")


class LogHandler:
    """No keys. Logs event_id, type, job_id, provider, status, output_urls (and error_code on failure);
    a `budget` event (when asked for) as its provider, day, level, spent, limit and unit."""

    async def handle(self, event: dict[str, Any]) -> dict[str, Any] | None:
        if event.get("type") == "budget":
            logger.warning("budget_reached", event_id=event.get("id"), **(event.get("budget") or {}))
            return None
        job = event.get("job") or {}
        fields: dict[str, Any] = {
            "event_id": event.get("id"),
            "type": event.get("type"),
            "job_id": job.get("id"),
            "provider": job.get("provider"),
            "status": job.get("status"),
            "output_urls": list(job.get("output_urls") or []),
        }
        error = job.get("error")
        if isinstance(error, dict) and error.get("code"):
            fields["error_code"] = error["code"]
        logger.info("job_finished", **fields)
        return None

    async def aclose(self) -> None:
        return None
