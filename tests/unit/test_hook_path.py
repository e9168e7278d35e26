"""Which paths the webhook road in front of Starlette takes: exactly those `/hooks/{provider}/{token}`
matches (each part one or more characters other than `/`); the app answers the others."""

from __future__ import annotations

import pytest

from receiver.hooks import hook_path


@pytest.mark.parametrize(
    ("path", "found"),
    [
        ("/hooks/apiframe/abc.def-ghi_", ("apiframe", "abc.def-ghi_")),
        ("/hooks/runbase/x", ("runbase", "x")),
        ("/hooks/unknown/x", ("unknown", "x")),  # the road refuses it (no token names that provider)
        ("/hooks/apiframe", None),
        ("/hooks/apiframe/", None),
        ("/hooks//token", None),
        ("/hooks/apiframe/token/", None),
        ("/hooks/apiframe/token/more", None),
        ("/hooksapiframe/token", None),
        ("/jobs", None),
        ("/ui/hooks/apiframe/token", None),
    ],
)
def test_hook_path_takes_what_the_route_matches(path: str, found: tuple[str, str] | None) -> None:
    assert hook_path(path) == found
