"""Helpers shared by the integration and end-to-end tests live in tests/support (`pythonpath` in
pyproject.toml makes `tests.support` importable)."""
