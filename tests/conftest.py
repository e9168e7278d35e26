"""Helpers shared by the integration and end-to-end tests live in tests/support (`pythonpath` in
pyproject.toml makes `tests.support` importable).

Property tests run under the `receiver` Hypothesis profile: a modest number of examples, no per-example
deadline (the suite must pass on a busy machine), and derandomized, so a failure found once is found
again by the same command; `HYPOTHESIS_PROFILE=explore` searches longer with a fresh random seed each
run (a failure prints the `@reproduce_failure` line that replays it)."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile(
    "receiver", max_examples=200, deadline=None, derandomize=True, database=None, print_blob=True
)
settings.register_profile("explore", max_examples=5000, deadline=None, database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "receiver"))
