"""KlingRequest.from_dict: every rule names its field; params() is what providers see."""

from __future__ import annotations

from typing import Any

import pytest

from receiver.generation import MAX_PROMPT, MAX_TEXT, KlingRequest, ValidationError


def _errors(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        KlingRequest.from_dict(data)
    return caught.value.errors


def test_a_prompt_alone_is_a_request_with_defaults() -> None:
    request = KlingRequest.from_dict({"prompt": "a red fox in snow"})
    assert request == KlingRequest(prompt="a red fox in snow")
    assert request.mode == "pro"
    assert request.generate_audio is False
    assert request.metadata == {}


def test_every_field_is_taken() -> None:
    data = {
        "prompt": "a red fox",
        "mode": "4k",
        "aspect_ratio": "9:16",
        "duration": 10,
        "start_image": "https://example.com/a.png",
        "end_image": "http://example.com/b.png",
        "generate_audio": True,
        "negative_prompt": "blur",
        "multi_prompt": "shot 1; shot 2",
        "metadata": {"campaign": "spring", "n": 3},
    }
    request = KlingRequest.from_dict(data)
    assert request.params() == {k: v for k, v in data.items() if k != "metadata"}
    assert request.metadata == {"campaign": "spring", "n": 3}


@pytest.mark.parametrize("prompt", [None, "", "   ", 42, ["a"]])
def test_prompt_is_required_and_a_non_empty_string(prompt: object) -> None:
    data = {} if prompt is None else {"prompt": prompt}
    assert set(_errors(data)) == {"prompt"}


def test_prompt_length_is_capped() -> None:
    assert KlingRequest.from_dict({"prompt": "x" * MAX_PROMPT}).prompt == "x" * MAX_PROMPT
    assert _errors({"prompt": "x" * (MAX_PROMPT + 1)}) == {"prompt": "at most 4000 characters"}


@pytest.mark.parametrize("mode", ["standard", "pro", "4k"])
def test_known_modes_pass(mode: str) -> None:
    assert KlingRequest.from_dict({"prompt": "p", "mode": mode}).mode == mode


@pytest.mark.parametrize("mode", ["PRO", "master", None, 1])
def test_other_modes_are_refused(mode: object) -> None:
    assert _errors({"prompt": "p", "mode": mode}) == {"mode": "one of standard, pro, 4k"}


@pytest.mark.parametrize("ratio", ["16:9", "9:16", "1:1"])
def test_known_aspect_ratios_pass(ratio: str) -> None:
    assert KlingRequest.from_dict({"prompt": "p", "aspect_ratio": ratio}).aspect_ratio == ratio


@pytest.mark.parametrize("ratio", ["4:3", "16x9", "", 1.77])
def test_other_aspect_ratios_are_refused(ratio: object) -> None:
    assert _errors({"prompt": "p", "aspect_ratio": ratio}) == {"aspect_ratio": "one of 16:9, 9:16, 1:1"}


@pytest.mark.parametrize(("given", "kept"), [(3, 3), (15, 15), (10, 10), (5.0, 5)])
def test_duration_in_whole_seconds_from_3_to_15(given: object, kept: int) -> None:
    request = KlingRequest.from_dict({"prompt": "p", "duration": given})
    assert request.duration == kept
    assert type(request.duration) is int


@pytest.mark.parametrize("duration", [2, 16, 0, -5, 5.5, "5", True, False, [5]])
def test_other_durations_are_refused(duration: object) -> None:
    assert _errors({"prompt": "p", "duration": duration}) == {"duration": "whole seconds from 3 to 15"}


@pytest.mark.parametrize("name", ["start_image", "end_image"])
@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/a.png",
        "example.com/a.png",
        "https://",
        "file:///tmp/a.png",
        7,
        "http://x]/a.png",
        "http://[::1/a",
    ],
)
def test_images_must_be_http_urls(name: str, url: object) -> None:
    assert _errors({"prompt": "p", name: url}) == {name: "an http(s) URL"}


@pytest.mark.parametrize("audio", ["true", 1, 0, None])
def test_generate_audio_is_a_bool(audio: object) -> None:
    assert _errors({"prompt": "p", "generate_audio": audio}) == {"generate_audio": "true or false"}


@pytest.mark.parametrize("name", ["negative_prompt", "multi_prompt"])
def test_texts_are_strings_of_capped_length(name: str) -> None:
    assert KlingRequest.from_dict({"prompt": "p", name: "y" * MAX_TEXT}).params()[name] == "y" * MAX_TEXT
    rule = {name: "a string of at most 4000 characters"}
    assert _errors({"prompt": "p", name: "y" * (MAX_TEXT + 1)}) == rule
    assert _errors({"prompt": "p", name: ["y"]}) == rule


@pytest.mark.parametrize("metadata", [["a"], "a=b", 3, {1: "x"}])
def test_metadata_is_an_object_with_string_keys(metadata: object) -> None:
    assert _errors({"prompt": "p", "metadata": metadata}) == {"metadata": "an object with string keys"}


def test_metadata_is_copied_not_shared() -> None:
    given = {"a": 1}
    request = KlingRequest.from_dict({"prompt": "p", "metadata": given})
    given["b"] = 2
    assert request.metadata == {"a": 1}


def test_unknown_fields_are_named() -> None:
    assert _errors({"prompt": "p", "seed": 1, "cfg": 0.5}) == {
        "cfg": "unknown field",
        "seed": "unknown field",
    }


def test_several_errors_are_reported_at_once() -> None:
    with pytest.raises(ValidationError) as caught:
        KlingRequest.from_dict(
            {"mode": "ultra", "duration": 99, "start_image": "nope", "generate_audio": "y", "extra": 1}
        )
    errors = caught.value.errors
    assert set(errors) == {"prompt", "mode", "duration", "start_image", "generate_audio", "extra"}
    message = str(caught.value)
    for name in errors:
        assert f"{name}: " in message


def test_validation_error_is_a_value_error() -> None:
    assert issubclass(ValidationError, ValueError)


def test_params_are_the_normalized_fields_without_metadata() -> None:
    request = KlingRequest.from_dict({"prompt": "p", "metadata": {"k": "v"}})
    assert request.params() == {
        "prompt": "p",
        "mode": "pro",
        "aspect_ratio": None,
        "duration": None,
        "start_image": None,
        "end_image": None,
        "generate_audio": False,
        "negative_prompt": None,
        "multi_prompt": None,
    }
