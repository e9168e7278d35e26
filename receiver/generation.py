"""The normalized Kling 3.0 request: described once, sent to either provider."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

MODES = ("standard", "pro", "4k")
ASPECT_RATIOS = ("16:9", "9:16", "1:1")
MIN_DURATION, MAX_DURATION = 3, 15
MAX_PROMPT = 4000
MAX_TEXT = 4000

FIELDS = (
    "prompt",
    "mode",
    "aspect_ratio",
    "duration",
    "start_image",
    "end_image",
    "generate_audio",
    "negative_prompt",
    "multi_prompt",
)


class ValidationError(ValueError):
    """A request that breaks a rule; `errors` maps each bad field to the rule it broke."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{name}: {rule}" for name, rule in errors.items()))


@dataclass(frozen=True)
class KlingRequest:
    prompt: str
    mode: str = "pro"
    aspect_ratio: str | None = None
    duration: int | None = None
    start_image: str | None = None
    end_image: str | None = None
    generate_audio: bool = False
    negative_prompt: str | None = None
    multi_prompt: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def params(self) -> dict[str, Any]:
        """The normalized parameters, as stored in the job's `request`."""
        data = asdict(self)
        data.pop("metadata")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KlingRequest:
        """Validate a request body; raises ValidationError naming every bad field."""
        errors: dict[str, str] = {}
        unknown = sorted(set(data) - set(FIELDS) - {"metadata"})
        for name in unknown:
            errors[name] = "unknown field"
        prompt = data.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            errors["prompt"] = "required, a non-empty string"
        elif len(prompt) > MAX_PROMPT:
            errors["prompt"] = f"at most {MAX_PROMPT} characters"
        mode = data.get("mode", "pro")
        if mode not in MODES:
            errors["mode"] = f"one of {', '.join(MODES)}"
        aspect = data.get("aspect_ratio")
        if aspect is not None and aspect not in ASPECT_RATIOS:
            errors["aspect_ratio"] = f"one of {', '.join(ASPECT_RATIOS)}"
        duration = data.get("duration")
        if duration is not None:
            if isinstance(duration, float) and duration.is_integer():
                duration = int(duration)
            if (
                isinstance(duration, bool)
                or not isinstance(duration, int)
                or not MIN_DURATION <= duration <= MAX_DURATION
            ):
                errors["duration"] = f"whole seconds from {MIN_DURATION} to {MAX_DURATION}"
        for name in ("start_image", "end_image"):
            value = data.get(name)
            if value is not None and not _is_http_url(value):
                errors[name] = "an http(s) URL"
        audio = data.get("generate_audio", False)
        if not isinstance(audio, bool):
            errors["generate_audio"] = "true or false"
        for name in ("negative_prompt", "multi_prompt"):
            value = data.get(name)
            if value is not None and (not isinstance(value, str) or len(value) > MAX_TEXT):
                errors[name] = f"a string of at most {MAX_TEXT} characters"
        metadata = data.get("metadata", {})
        if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
            errors["metadata"] = "an object with string keys"
        if errors:
            raise ValidationError(errors)
        return cls(
            prompt=prompt,  # type: ignore[arg-type]  # checked above
            mode=mode,
            aspect_ratio=aspect,
            duration=duration,
            start_image=data.get("start_image"),
            end_image=data.get("end_image"),
            generate_audio=audio,
            negative_prompt=data.get("negative_prompt"),
            multi_prompt=data.get("multi_prompt"),
            metadata=dict(metadata),
        )


def _is_http_url(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:  # "http://x]/": an unbalanced IPv6 bracket (found by the Schemathesis run)
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)
