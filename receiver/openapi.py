"""The OpenAPI 3.1 document of the receiver's HTTP API, served at `/openapi.json`.

Built from the same constants the routes validate with (statuses, modes, limits), so a new job status
or mode shows up here by itself; `docs/openapi.json` is this document as committed, and a test keeps
the two equal (`python -m receiver.openapi > docs/openapi.json` refreshes it). Objects the contract
may extend (the job, its attempts, the tick counts) allow properties beyond those listed.
"""

from __future__ import annotations

import json
from typing import Any

from receiver import __version__
from receiver.admin import MAX_LIMIT
from receiver.bodies import MAX_BODY
from receiver.events import MAX_OUTPUT_URLS, DeliveryStatus, JobStatus
from receiver.failover import AUTO
from receiver.generation import (
    ASPECT_RATIOS,
    MAX_DURATION,
    MAX_PROMPT,
    MAX_TEXT,
    MIN_DURATION,
    MODES,
)
from receiver.providers import registry

_REF = "#/components/schemas/"
_ERROR_RESPONSES = "#/components/responses/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: str) -> dict[str, Any]:
    return {status: {"$ref": _ERROR_RESPONSES + status} for status in statuses}


_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
# Strings the store can hold: no NUL (receiver.bodies refuses one anywhere in a body with a 400).
_TEXT = "^[^\\u0000]*$"
_PROMPT = "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$"  # and not only whitespace
_NAME = "\\s*(?:" + "|".join(registry.NAMES) + ")\\s*"
_NAME_LIST = f"^{_NAME}(?:,{_NAME})*$"
_HTTP_URL = "^[hH][tT][tT][pP][sS]?://[^/?#\\s\\u0000][^\\u0000]*$"

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "description": "Every refusal: `error` says what is wrong; a provider's refusal adds its details.",
        "required": ["error"],
        "properties": {
            "error": {"type": "string"},
            "provider": {"type": ["string", "null"]},
            "code": {"type": ["string", "null"]},
            "request_id": {"type": ["string", "null"]},
        },
    },
    "ValidationErrors": {
        "type": "object",
        "description": "A submit that breaks rules: `errors` maps each bad field to the rule it broke.",
        "required": ["error", "errors"],
        "properties": {
            "error": {"const": "invalid request"},
            "errors": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
    "SubmitRequest": {
        "type": "object",
        "description": "A Kling 3.0 request, normalized: sent as is to either provider.",
        "required": ["prompt"],
        "additionalProperties": False,
        "properties": {
            "provider": {
                "description": "A provider, `auto`, or providers tried in order (a list, or names "
                "separated by commas); RECEIVER_PROVIDER when absent.",
                "anyOf": [
                    {"enum": [*registry.NAMES, AUTO]},
                    {"type": "array", "items": {"enum": list(registry.NAMES)}, "minItems": 1},
                    {"type": "string", "pattern": _NAME_LIST},
                ],
            },
            "prompt": {"type": "string", "maxLength": MAX_PROMPT, "pattern": _PROMPT},
            "mode": {"enum": list(MODES), "default": "pro"},
            "aspect_ratio": {"enum": [*ASPECT_RATIOS, None]},
            "duration": {"type": ["integer", "null"], "minimum": MIN_DURATION, "maximum": MAX_DURATION},
            "start_image": {"type": ["string", "null"], "pattern": _HTTP_URL},
            "end_image": {"type": ["string", "null"], "pattern": _HTTP_URL},
            "generate_audio": {"type": "boolean", "default": False},
            "negative_prompt": {"type": ["string", "null"], "maxLength": MAX_TEXT, "pattern": _TEXT},
            "multi_prompt": {"type": ["string", "null"], "maxLength": MAX_TEXT, "pattern": _TEXT},
            "metadata": {"type": "object", "description": "Kept with the job and sent in its event."},
        },
    },
    "JobError": {
        "type": "object",
        "required": ["code", "message"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
    },
    "Attempt": {
        "type": "object",
        "description": "One provider a submit went to.",
        "required": ["provider", "outcome", "answer", "at"],
        "properties": {
            "provider": {"type": "string"},
            "outcome": {"type": "string", "examples": ["accepted", "refused", "throttled", "unknown"]},
            "answer": {"type": "string"},
            "at": _NULLABLE_TIME,
        },
    },
    "Delivery": {
        "type": "object",
        "required": ["handler", "status", "attempts", "last_error"],
        "properties": {
            "handler": {"type": "string"},
            "status": {"enum": [str(s) for s in DeliveryStatus]},
            "attempts": {"type": "integer", "minimum": 0},
            "last_error": {"type": ["string", "null"]},
        },
    },
    "Job": {
        "type": "object",
        "description": "The job JSON of DESIGN.md; new fields may be added.",
        "required": [
            "id",
            "provider",
            "provider_job_id",
            "model",
            "status",
            "request",
            "metadata",
            "output_urls",
            "error",
            "progress",
            "created_at",
            "submitted_at",
            "completed_at",
            "completed_via",
        ],
        "properties": {
            "id": {"type": "string", "pattern": "^job_"},
            "provider": {"type": "string"},
            "provider_job_id": {"type": ["string", "null"]},
            "model": {"type": "string"},
            "status": {"enum": [str(s) for s in JobStatus]},
            "request": {"type": "object"},
            "metadata": {"type": "object"},
            "output_urls": {"type": "array", "items": {"type": "string"}, "maxItems": MAX_OUTPUT_URLS},
            "error": {"oneOf": [_ref("JobError"), {"type": "null"}]},
            "progress": {"type": ["integer", "null"]},
            "created_at": {"type": "string", "format": "date-time"},
            "submitted_at": _NULLABLE_TIME,
            "completed_at": _NULLABLE_TIME,
            "completed_via": {"type": ["string", "null"]},
            "attempts": {"type": "array", "items": _ref("Attempt")},
            "cost": {"oneOf": [_ref("Cost"), {"type": "null"}]},
            "deliveries": {"type": "array", "items": _ref("Delivery")},
        },
    },
    "Cost": {
        "type": "object",
        "description": "What the job cost, net of refunds: the provider's figure, or an estimate.",
        "required": ["amount", "unit", "source"],
        "properties": {
            "amount": {"type": "number", "minimum": 0},
            "unit": {"type": ["string", "null"], "description": "credits (Apiframe) or usd (Runbase)."},
            "source": {"enum": ["provider", "estimate"]},
        },
    },
    "JobList": {
        "type": "object",
        "required": ["jobs"],
        "properties": {"jobs": {"type": "array", "items": _ref("Job")}},
    },
    "Replayed": {
        "type": "object",
        "required": ["replayed", "event_id"],
        "properties": {
            "replayed": {"type": "integer", "minimum": 0},
            "event_id": {"type": ["string", "null"]},
        },
    },
    "TickSummary": {
        "type": "object",
        "description": "What one round of polling and dispatch did, by count.",
        "additionalProperties": {"type": "integer", "minimum": 0},
    },
    "WebhookAnswer": {
        "type": "object",
        "required": ["ok"],
        "properties": {
            "ok": {"const": True},
            "status": {"enum": [str(s) for s in JobStatus]},
            "duplicate": {"type": "boolean"},
            "confirm": {"const": "poll"},
        },
    },
    "Health": {
        "type": "object",
        "required": ["ok"],
        "properties": {"ok": {"type": "boolean"}, "problems": {"type": "array", "items": {"type": "string"}}},
    },
}

_ERROR_TEXT = {
    "400": "Bad input: the message names the parameter or what is wrong with the body.",
    "401": "Missing or wrong credentials (admin bearer token, webhook token or signature).",
    "403": "Admin routes are off: RECEIVER_ADMIN_TOKEN is not set.",
    "404": "No such job.",
    "409": "The job has not finished.",
    "413": f"The body is over {MAX_BODY} bytes.",
    "502": "The provider failed to answer usably.",
    "503": "The store is unreachable (with Retry-After) or a setting the request needs is missing.",
}

_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
_ADMIN: list[dict[str, list[str]]] = [{"adminToken": []}]


def document() -> dict[str, Any]:
    """The OpenAPI document, as JSON-ready data."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kling-receiver",
            "version": __version__,
            "description": "Webhooks from the providers, health and metrics, and the admin routes "
            "(behind RECEIVER_ADMIN_TOKEN) that submit, read, replay and tick Kling 3.0 video jobs.",
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "paths": {
            "/hooks/{provider}/{token}": {
                "post": {
                    "operationId": "webhook",
                    "summary": "A provider reports a job's progress or result.",
                    "description": "`token` is the per-job webhook token the receiver put in the URL it "
                    "gave the provider; Apiframe's body is signed with X-Webhook-Signature. The webhook "
                    "is recorded durably and answered; handlers run later, in the worker.",
                    "security": [{"webhookSignature": []}, {}],
                    "parameters": [
                        {"name": "provider", "in": "path", "required": True, "schema": {"type": "string"}},
                        {
                            "name": "token",
                            "in": "path",
                            "required": True,
                            "description": "The per-job webhook token: signed with RECEIVER_SECRET, it names "
                            "the job and the provider and expires (RECEIVER_TOKEN_MAX_AGE).",
                            "schema": {"type": "string"},
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "responses": {
                        "200": _json(_ref("WebhookAnswer"), "Recorded (or a duplicate of what was)."),
                        **_errors("400", "401", "404", "413", "503"),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Whether the store answers and the worker (when it runs here) keeps up.",
                    "responses": {
                        "200": _json(_ref("Health"), "Healthy."),
                        "503": _json(_ref("Health"), "Not healthy: `problems` says why."),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics.",
                    "responses": {
                        "200": {
                            "description": "The Prometheus text format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **_errors("503"),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document.",
                    "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")},
                }
            },
            "/jobs": {
                "post": {
                    "operationId": "submit",
                    "summary": "Submit a Kling 3.0 job to a provider.",
                    "security": _ADMIN,
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "description": "Names the job: a repeat answers 200 with the job the first "
                            "request made and sends nothing; the same key with another request is 409.",
                            "schema": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": 255,
                                "pattern": "^[ -~]+$",
                            },
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("SubmitRequest")}},
                    },
                    "responses": {
                        "200": _json(
                            _ref("Job"), "A repeat (the same Idempotency-Key): the job as it is now."
                        ),
                        "202": _json(_ref("Job"), "Accepted: submitted, or queued for the rate budget."),
                        "422": _json(_ref("ValidationErrors"), "The request breaks rules."),
                        "4XX": _json(_ref("Error"), "Refused: by the receiver, or by the provider."),
                        **_errors("400", "401", "403", "413", "502", "503"),
                    },
                },
                "get": {
                    "operationId": "listJobs",
                    "summary": "The newest jobs, optionally of one status.",
                    "security": _ADMIN,
                    "parameters": [
                        {
                            "name": "status",
                            "in": "query",
                            "schema": {"enum": [str(s) for s in JobStatus]},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 100},
                        },
                    ],
                    "responses": {
                        "200": _json(_ref("JobList"), "The jobs, newest first."),
                        **_errors("400", "401", "403", "503"),
                    },
                },
            },
            "/jobs/{job_id}": {
                "get": {
                    "operationId": "getJob",
                    "summary": "One job, with its deliveries.",
                    "security": _ADMIN,
                    "parameters": [_JOB_ID],
                    "responses": {
                        "200": _json(_ref("Job"), "The job."),
                        **_errors("401", "403", "404", "503"),
                    },
                }
            },
            "/jobs/{job_id}/replay": {
                "post": {
                    "operationId": "replay",
                    "summary": "Deliver a finished job's event again, to every handler or one.",
                    "security": _ADMIN,
                    "parameters": [
                        _JOB_ID,
                        {"name": "handler", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": _json(_ref("Replayed"), "The deliveries made due again."),
                        **_errors("400", "401", "403", "404", "409", "503"),
                    },
                }
            },
            "/tick": {
                "post": {
                    "operationId": "tick",
                    "summary": "One round of polling and dispatch (for a scheduler).",
                    "security": _ADMIN,
                    "responses": {
                        "200": _json(_ref("TickSummary"), "What the round did."),
                        **_errors("401", "403", "503"),
                    },
                }
            },
        },
        "components": {
            "schemas": SCHEMAS,
            "responses": {status: _json(_ref("Error"), text) for status, text in _ERROR_TEXT.items()},
            "securitySchemes": {
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "RECEIVER_ADMIN_TOKEN; the admin routes answer 403 while it is unset.",
                },
                "webhookSignature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Webhook-Signature",
                    "description": "Apiframe's `sha256=<hex>`: HMAC-SHA256 of the raw body keyed with "
                    "SHA-256 of the API key.",
                },
            },
        },
    }


def render() -> str:
    """The document as committed in docs/openapi.json."""
    return json.dumps(document(), indent=2) + "\n"


if __name__ == "__main__":
    print(render(), end="")
